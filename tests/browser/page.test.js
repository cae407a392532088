// The chat page as a person uses it, at phone and at desktop size, over the protocol's version 2
// (src/chat.html asks for `mio-chat.v2`): notices nobody can forge, one's own messages set apart,
// how many are online, a time on every message, a mark where the connection dropped, and nothing
// typed lost without being told. chat.test.js covers the room itself (order, escaping, Redis).
// Run: cargo build && cd tests/browser && npm ci && npm test
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const {
  launchBrowser, withChat, waitForState, entries, mine, texts, waitForCount, waitForText, say, RECONNECT_TIMEOUT,
} = require('./harness');

const JOINED = 'New User Joined...';
const LEFT = 'User Disconnected...';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const SIZES = [
  ['phone', { viewport: { width: 360, height: 640 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 }],
  ['desktop', { viewport: { width: 1280, height: 800 } }],
];

for (const [size, device] of SIZES) {
  test(`${size}: a typed notice is shown as a message, and a real one as a notice`, (t) => withChat(browser, t, async (chat) => {
    const a = await chat.open(device);
    const b = await chat.open(device);
    await waitForCount(a, 2, 'notice');
    await say(b, LEFT);
    await say(b, JOINED);
    await waitForText(a, JOINED, undefined);
    await waitForCount(a, 2, 'message');
    assert.deepEqual(await entries(a), [
      { kind: 'notice', text: 'You joined' },
      { kind: 'notice', text: JOINED },
      { kind: 'message', text: LEFT },
      { kind: 'message', text: JOINED },
    ]);
    await b.close();
    await waitForCount(a, 3, 'notice');
    assert.deepEqual((await entries(a)).at(-1), { kind: 'notice', text: LEFT }, 'the real leave is a notice');
  }));

  test(`${size}: my messages are set apart, each message has a time, and the header counts who is online`, (t) => withChat(browser, t, async (chat) => {
    const a = await chat.open(device);
    await waitForCount(a, 1, 'notice');
    await a.waitForFunction(() => document.getElementById('online').textContent === '1 online');
    const b = await chat.open(device);
    await a.waitForFunction(() => document.getElementById('online').textContent === '2 online');
    assert.equal(await b.textContent('#online'), '2 online');

    const before = Date.now();
    await say(a, 'from A');
    await waitForText(b, 'from A');
    await say(b, 'from B');
    await waitForText(a, 'from B');
    const after = Date.now();
    assert.deepEqual(await mine(a), ['from A']);
    assert.deepEqual(await mine(b), ['from B']);

    // Mine on the right, the others' on the left, and different colours.
    const look = (page, text) => page.$$eval('#messages > li.message', (items, t) => {
      const li = items.find((item) => item.querySelector('.text').textContent === t);
      const box = li.getBoundingClientRect();
      const list = document.getElementById('messages').getBoundingClientRect();
      return { left: box.left - list.left, right: list.right - box.right, background: getComputedStyle(li).backgroundColor };
    }, text);
    const own = await look(a, 'from A');
    const other = await look(a, 'from B');
    assert.ok(own.right < own.left && other.left < other.right, `own right, other left: ${JSON.stringify({ own, other })}`);
    assert.notEqual(own.background, other.background);

    // The server's time of each message, shown, and within the test's own window (one clock here).
    const times = await a.$$eval('#messages > li.message time', (items) => items.map((t) => ({ iso: t.dateTime, shown: t.textContent })));
    assert.equal(times.length, 2);
    for (const { iso, shown } of times) {
      const ms = Date.parse(iso);
      assert.ok(ms >= before - 1000 && ms <= after + 1000, `${iso} lies in the test's window`);
      assert.match(shown, /\d{1,2}:\d{2}:\d{2}/);
    }

    await b.close();
    await a.waitForFunction(() => document.getElementById('online').textContent === '1 online');
    if (process.env.WRITE_SCREENSHOT === '1') {
      await a.screenshot({ path: path.join(__dirname, `../../docs/page-${size}.png`) });
    }
  }));

  test(`${size}: a message too long for the server is refused before sending, and kept`, (t) => withChat(browser, t, async (chat) => {
    await chat.server.kill();
    await chat.startAgain(['--max-message-size', '100']);
    const a = await chat.open(device);
    await waitForCount(a, 1, 'notice');
    const tooLong = 'ü'.repeat(51); // 102 bytes of UTF-8 in 51 characters
    await a.fill('#input', tooLong);
    await a.waitForFunction(() => document.getElementById('hint').textContent !== '');
    assert.equal(await a.textContent('#hint'), 'Too long: 102 bytes, the server takes at most 100.');
    assert.ok(await a.isDisabled('#send'));
    await a.press('#input', 'Enter');
    assert.equal(await a.inputValue('#input'), tooLong, 'the text stays in the box');
    assert.equal(await a.isVisible('#hint'), true);

    // Shortened to fit, it goes, and the box empties.
    const fits = 'ü'.repeat(50);
    await a.fill('#input', fits);
    assert.equal(await a.textContent('#hint'), '');
    await a.press('#input', 'Enter');
    await waitForText(a, fits);
    assert.equal(await a.inputValue('#input'), '');
    assert.deepEqual(await texts(a, 'error'), []);
    assert.equal(await a.textContent('#status'), 'online', 'no reconnect: nothing was refused by the server');
  }));

  test(`${size}: a message the server never echoed comes back to the box, with the reason`, (t) => withChat(browser, t, async (chat) => {
    const a = await chat.open(device);
    await waitForCount(a, 1, 'notice');
    chat.server.pause(); // the server takes the bytes into its socket but never answers
    await say(a, 'are you there?');
    assert.equal(await a.inputValue('#input'), '', 'sent: the box empties');
    await chat.server.kill(); // the connection is lost without a close frame: 1006
    await waitForState(a, 'reconnecting');
    await a.waitForFunction(() => document.getElementById('input').value === 'are you there?');
    assert.deepEqual(await texts(a, 'error'), ['Not delivered: the connection was lost (close code 1006). Your message is back in the box.']);
    assert.deepEqual(await texts(a, 'message'), []);
  }));

  test(`${size}: every message the server never echoed is given back, and what is being typed stays`, (t) => withChat(browser, t, async (chat) => {
    const a = await chat.open(device);
    await waitForCount(a, 1, 'notice');
    chat.server.pause();
    await say(a, 'first');
    await say(a, 'second');
    await a.fill('#input', 'still typing');
    await chat.server.kill();
    await waitForState(a, 'reconnecting');
    await waitForCount(a, 3, 'error');
    assert.equal(await a.inputValue('#input'), 'still typing', 'the box is not overwritten');
    assert.deepEqual(await texts(a, 'error'), [
      'Not delivered: the connection was lost (close code 1006).',
      'Not sent: first',
      'Not sent: second',
    ]);
  }));

  test(`${size}: a restart leaves a mark saying what may have been missed, not a join`, (t) => withChat(browser, t, async (chat) => {
    const a = await chat.open(device);
    await waitForCount(a, 1, 'notice');
    await chat.server.stop();
    await waitForState(a, 'reconnecting');
    await chat.startAgain();
    await waitForState(a, 'online', RECONNECT_TIMEOUT);
    await waitForCount(a, 1, 'gap', RECONNECT_TIMEOUT);
    const list = await entries(a);
    assert.deepEqual(list.map((e) => e.kind), ['notice', 'error', 'gap']);
    assert.equal(list[0].text, 'You joined');
    assert.equal(list[1].text, 'Disconnected: the server is going away (restart or shutdown) (close code 1001).');
    assert.match(list[2].text, /^You were offline from \d{1,2}:\d{2}:\d{2}.* to \d{1,2}:\d{2}:\d{2}.*; messages sent meanwhile were not received\.$/);
  }));
}

test('three people: each other person\'s messages and notices carry a name of their own', (t) => withChat(browser, t, async (chat) => {
  const a = await chat.open();
  await waitForCount(a, 1, 'notice');
  const b = await chat.open();
  await waitForCount(a, 2, 'notice');
  const c = await chat.open();
  await waitForCount(a, 3, 'notice');
  await say(b, 'hi');
  await waitForCount(a, 1, 'message');
  await say(c, 'hi');
  await waitForCount(a, 2, 'message');
  await c.close();
  await waitForCount(a, 4, 'notice');
  const who = (page) => page.$$eval('#messages > li', (items) => items.map((li) => {
    const name = li.querySelector('.who');
    return `${li.className}:${name ? name.textContent : ''}`;
  }));
  const seen = await who(a);
  const [, bJoin, cJoin, bSaid, cSaid, cLeft] = seen;
  assert.equal(seen[0], 'notice:', 'my own join names nobody');
  assert.ok(bJoin !== 'notice:' && cJoin !== 'notice:', `joins are named: ${seen}`);
  assert.equal(bSaid, bJoin.replace('notice', 'message'), `B's message has the name of B's join: ${seen}`);
  assert.equal(cSaid, cJoin.replace('notice', 'message'), `C's message has the name of C's join: ${seen}`);
  assert.equal(cLeft, cJoin, `C's leave has the name of C's join: ${seen}`);
  assert.notEqual(bSaid, cSaid, 'two people, two names');
  // On B's own page, its message is mine, and says nothing more.
  assert.deepEqual((await who(b)).filter((e) => e.startsWith('message')), ['message:', cSaid]);
}));

test('a page the server stopped hearing is told so, not that the server went away', (t) => withChat(browser, t, async (chat) => {
  await chat.server.kill();
  await chat.startAgain(['--ping-interval', '0.3']);
  const gate = await chat.startGate();
  gate.release();
  const a = await chat.openOffline();
  await a.goto(gate.url);
  await waitForState(a, 'online');
  await waitForCount(a, 1, 'notice');
  gate.hold(); // the server's pings reach the page; its pongs never reach the server
  await waitForCount(a, 1, 'error');
  // (The page reconnects through the same gate, and may be cut off again: the first one counts.)
  assert.equal((await texts(a, 'error'))[0], 'Disconnected: the server stopped hearing from this page (close code 1001).');
}));

// "h:mm:ss" (any 12- or 24-hour form) as seconds into a half day, to compare two times shown.
function halfDaySeconds(shown) {
  const [h, m, s] = shown.match(/(\d{1,2}):(\d{2}):(\d{2})/).slice(1).map(Number);
  return ((h % 12) * 3600 + m * 60 + s);
}

test('two restarts leave two marks, each on the server\'s clock, even when the computer\'s clock is an hour off', (t) => withChat(browser, t, async (chat) => {
  const a = await chat.openOffline();
  await a.addInitScript(() => {
    const realNow = Date.now;
    Date.now = () => realNow() - 3_600_000 - 17_000; // a clock off by an hour and a bit
  });
  await a.goto(chat.server.url);
  await waitForState(a, 'online');
  await waitForCount(a, 1, 'notice');
  for (const restart of [1, 2]) {
    await chat.server.stop();
    await waitForState(a, 'reconnecting');
    await chat.startAgain();
    await waitForState(a, 'online', RECONNECT_TIMEOUT);
    await waitForCount(a, restart, 'gap', RECONNECT_TIMEOUT);
  }
  await say(a, 'back');
  await waitForText(a, 'back');
  const shownAt = halfDaySeconds(await a.textContent('#messages > li.message time'));
  for (const gap of await texts(a, 'gap')) {
    const [from, to] = gap.match(/from (.*) to (.*); messages/).slice(1).map(halfDaySeconds);
    const span = (to - from + 43_200) % 43_200;
    assert.ok(span < 60, `offline for seconds, not an hour: ${gap}`);
    assert.ok((shownAt - to + 43_200) % 43_200 < 60, `on the clock of the message times (${shownAt}): ${gap}`);
  }
  assert.equal(await a.evaluate(() => document.querySelectorAll('#messages > li.notice').length), 1, 'no rejoin shown as a join');
}));

test('desktop: the input lines up with the messages column', (t) => withChat(browser, t, async (chat) => {
  const a = await chat.open({ viewport: { width: 1280, height: 800 } });
  await waitForCount(a, 1, 'notice');
  const list = await a.locator('#messages').boundingBox();
  const form = await a.locator('#form').boundingBox();
  assert.ok(list.width <= 800 && Math.abs(form.x - list.x) < 1 && Math.abs(form.width - list.width) < 1,
    `form ${JSON.stringify(form)} under list ${JSON.stringify(list)}`);
}));
