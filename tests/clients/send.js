// Sends one lead's events with a real third-party tracking client, as an application would.
//
//   node send.js CLIENT HOST WRITE_KEY LEAD_ID NAME [ORIGINAL_TIMESTAMP]
//
// CLIENT is segment-node (@segment/analytics-node), legacy-node (analytics-node 6) or
// rudder-node (@rudderstack/rudder-sdk-node). The lead is identified with traits that fit the
// default rules, views the pricing page and requests a demo: hot. With ORIGINAL_TIMESTAMP (ISO
// 8601, RudderStack only) the events say they happened then. Exits 0 once the client reports
// every event delivered, 1 with the client's errors otherwise.
'use strict'

const [client, host, writeKey, lead, name, originalTimestamp] = process.argv.slice(2)
if (!lead) {
  console.error('usage: node send.js CLIENT HOST WRITE_KEY LEAD_ID NAME [ORIGINAL_TIMESTAMP]')
  process.exit(2)
}

const traits = {
  // a company of its own per lead: no account owner carried over from another client's lead
  name, email: `${lead}@${lead}.example.com`, title: 'VP Engineering', phone: '+14155550100', role: 'decision_maker',
  company: { name: 'Acme', industry: 'software', employee_count: 1200 }, address: { country: 'US' },
}
const calls = [
  ['identify', { userId: lead, traits }],
  ['track', { userId: lead, event: 'Pricing Page Viewed', properties: { path: '/pricing' } }],
  ['track', { userId: lead, event: 'Demo Requested', properties: { page: '/demo' } }],
]
const errors = []

function finish () {
  if (errors.length) {
    console.error(JSON.stringify(errors.map(String)))
    process.exit(1)
  }
  console.log(`${client}: ${calls.length} events delivered`)
  process.exit(0)
}

// Callback clients: resolved once every call's callback has fired.
function sendWithCallbacks (analytics) {
  let pending = calls.length
  for (const [method, message] of calls) {
    const msg = originalTimestamp ? { ...message, originalTimestamp } : message
    analytics[method](msg, (err) => {
      if (err) errors.push(err)
      if (--pending === 0) finish()
    })
  }
  analytics.flush()
}

if (client === 'segment-node') {
  const { Analytics } = require('@segment/analytics-node')
  const analytics = new Analytics({ writeKey, host, maxEventsInBatch: calls.length, flushInterval: 200 })
  analytics.on('error', (err) => errors.push(err.reason || err))
  for (const [method, message] of calls) analytics[method](message)
  analytics.closeAndFlush({ timeout: 30000 }).then(finish)
} else if (client === 'legacy-node') {
  const Analytics = require('analytics-node')
  sendWithCallbacks(new Analytics(writeKey, { host, flushAt: calls.length, flushInterval: 200 }))
} else if (client === 'rudder-node') {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  sendWithCallbacks(new Analytics(writeKey, {
    dataPlaneUrl: host, flushAt: calls.length, flushInterval: 200, logLevel: 'error',
  }))
} else {
  console.error(`unknown client ${client}`)
  process.exit(2)
}
setTimeout(() => { errors.push('timed out after 40 s'); finish() }, 40000).unref()
