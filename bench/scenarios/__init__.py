"""The benchmark's scenarios, one module each; ``bench.run`` runs them and writes the figures."""
