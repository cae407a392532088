// End-to-end tests of the chat page that mio-chat serves at `/`, in a real headless Chromium
// against the real server binary: what a person with two tabs open would see. The protocol itself
// is tested over raw sockets in tests/*.rs; these tests check the page's side of the contract
// (shared/protocol.md): notices, order, escaping, reconnecting, layout and scrolling, and one room
// across two server processes joined through Redis.
// Run: cargo build && cd tests/browser && npm ci && npm test
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  makeCert, pagesFor, startServer, RECONNECT_TIMEOUT, launchBrowser, withChat, withCluster, waitForState, entries, mine, texts, waitForCount, waitForText, say,
} = require('./harness');

const JOINED = 'New User Joined...';
const LEFT = 'User Disconnected...';
// How the page shows its own join (the protocol's version 2 tells it which join is its own).
const YOU = 'You joined';

// One browser for the whole file (it takes a second or two to start); each test gets fresh
// contexts, which share no cookies, storage or sockets, and a fresh server.
let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('two pages see the same messages, each once and in one order', (t) => withChat(browser, t, async (chat) => {
  const small = { viewport: { width: 480, height: 360 } };
  const a = await chat.open(small);
  await waitForCount(a, 1, 'notice'); // A's own join, before B exists, so A ends with exactly two
  const b = await chat.open(small);
  await waitForCount(a, 2, 'notice');
  await waitForCount(b, 1, 'notice');

  // Some one after the other, then both pages typing at once: the server picks the order, and
  // the test only demands that both pages agree on it and that each sender's order survives.
  const fromA = ['Hi! Is anyone here?', 'Let us both type at once.'];
  const fromB = ['Hello from the other tab.', 'Go!'];
  await say(a, fromA[0]);
  await waitForText(b, fromA[0]);
  await say(b, fromB[0], { click: true });
  await waitForText(a, fromB[0]);
  const burstA = ['A 1', 'A 2', 'A 3', 'A 4', 'A 5'];
  const burstB = ['B 1', 'B 2', 'B 3', 'B 4', 'B 5'];
  await Promise.all([
    (async () => { for (const text of [fromA[1], ...burstA]) await say(a, text); })(),
    (async () => { for (const text of [fromB[1], ...burstB]) await say(b, text, { click: true }); })(),
  ]);
  const sent = [...fromA, ...fromB, ...burstA, ...burstB];
  await waitForCount(a, sent.length, 'message');
  await waitForCount(b, sent.length, 'message');
  // A last message from A: when it has arrived everywhere, so has everything the server read
  // before it, including any duplicate that would still be on its way.
  const last = 'Same messages, same order, in both tabs.';
  await say(a, last);
  await waitForText(a, last);
  await waitForText(b, last);

  const listA = await entries(a);
  const listB = await entries(b);
  assert.deepEqual(listA.slice(0, 2), [{ kind: 'notice', text: YOU }, { kind: 'notice', text: JOINED }]);
  assert.deepEqual(listB[0], { kind: 'notice', text: YOU });
  assert.deepEqual(listB.slice(1), listA.slice(2), 'both pages show the same messages in the same order');
  const shown = listA.slice(2).map((e) => e.text);
  assert.deepEqual([...shown].sort(), [...sent, last].sort(), 'every message exactly once');
  assert.deepEqual(shown.filter((s) => [...fromA, ...burstA].includes(s)), [fromA[0], fromA[1], ...burstA]);
  assert.deepEqual(shown.filter((s) => [...fromB, ...burstB].includes(s)), [fromB[0], fromB[1], ...burstB]);
  assert.ok(listA.slice(2).every((e) => e.kind === 'message'));

  if (process.env.WRITE_SCREENSHOT === '1') await writeSideBySide(a, b, path.join(__dirname, '../../docs/two-tabs.png'));
}));

test('message text is shown as text, never run as HTML', (t) => withChat(browser, t, async (chat) => {
  const a = await chat.open();
  const b = await chat.open();
  const dialogs = [];
  for (const page of [a, b]) {
    page.on('dialog', (dialog) => { dialogs.push(dialog.message()); dialog.dismiss(); });
  }
  const evil = '<img src=x onerror=alert(1)>';
  await say(a, evil);
  // A message after it, to wait for. The decisive check is that no <img> was ever made; the
  // dialog check catches any other way the text could have become script.
  await say(a, 'after');
  for (const page of [a, b]) {
    await waitForText(page, 'after');
    assert.deepEqual((await texts(page, 'message')), [evil, 'after']);
    assert.equal(await page.locator('#messages img').count(), 0, 'no <img> element was made');
    assert.equal(await page.locator('#messages li.message .text').first().evaluate((span) => span.children.length), 0);
  }
  assert.deepEqual(dialogs, [], 'no dialog fired');
}));

test('closing one page tells the other that a user left', (t) => withChat(browser, t, async (chat) => {
  const a = await chat.open();
  const b = await chat.open();
  await waitForCount(a, 2, 'notice');
  await b.close();
  await waitForText(a, LEFT);
  assert.deepEqual(await texts(a, 'notice'), [YOU, JOINED, LEFT]);
}));

test('the status shows connecting, then online, and Send works only when online', (t) => withChat(browser, t, async (chat) => {
  const gate = await chat.startGate();
  const page = await chat.openOffline();
  await page.goto(gate.url);
  // The handshake is held at the gate: the page is loaded, its script has run, it is not connected.
  await waitForState(page, 'connecting');
  assert.equal(await page.textContent('#status'), 'connecting');
  assert.ok(await page.isDisabled('#send'));
  assert.ok(await page.isDisabled('#input'));

  gate.release();
  await waitForState(page, 'online');
  assert.equal(await page.textContent('#status'), 'online');
  assert.ok(await page.isEnabled('#send'));
  await say(page, 'it works');
  await waitForText(page, 'it works');
}));

test('pages reconnect by themselves after a server restart and chat again', (t) => withChat(browser, t, async (chat) => {
  const a = await chat.open();
  const b = await chat.open();
  await waitForCount(a, 2, 'notice');
  await say(a, 'before');
  await waitForText(b, 'before');

  const exited = chat.server.stop(); // SIGTERM: the server closes every client with 1001, then exits
  await Promise.all([waitForState(a, 'reconnecting'), waitForState(b, 'reconnecting')]);
  for (const page of [a, b]) {
    assert.equal(await page.textContent('#status'), 'reconnecting');
    assert.ok(await page.isDisabled('#send'), 'Send is disabled while offline');
  }
  assert.deepEqual(await exited, { code: 0, signal: null }, 'SIGTERM ends the server with exit code 0');
  await chat.startAgain(); // same port: the pages keep retrying the address they were loaded from

  await Promise.all([waitForState(a, 'online', RECONNECT_TIMEOUT), waitForState(b, 'online', RECONNECT_TIMEOUT)]);
  await say(b, 'after the restart', { click: true });
  await waitForText(a, 'after the restart');
  await waitForText(b, 'after the restart');
  // Whichever page came back first saw the other's join; each page's own rejoin shows as the end
  // of its time offline, not as someone joining. Both were online before B spoke, so all of it
  // came before B's message did.
  const joins = async (page) => (await texts(page, 'notice')).filter((n) => n === JOINED).length;
  assert.equal((await joins(a)) - 1 + (await joins(b)), 1, 'one new join notice, of the page that came back second');
  for (const page of [a, b]) {
    const gaps = await texts(page, 'gap');
    assert.equal(gaps.length, 1, 'one mark where the connection dropped and came back');
    assert.match(gaps[0], /^You were offline from .+ to .+; messages sent meanwhile were not received\.$/);
    assert.deepEqual(await texts(page, 'error'), ['Disconnected: the server is going away (restart or shutdown) (close code 1001).']);
  }
  assert.deepEqual(await texts(a, 'message'), ['before', 'after the restart']);
  assert.deepEqual(await texts(b, 'message'), ['before', 'after the restart']);
}));

for (const [name, viewport, device] of [
  ['phone', { width: 360, height: 640 }, { isMobile: true, hasTouch: true, deviceScaleFactor: 2 }],
  ['desktop', { width: 1280, height: 800 }, {}],
]) {
  test(`the page fits a ${name} screen (${viewport.width}x${viewport.height}) and long words wrap`, (t) => withChat(browser, t, async (chat) => {
    const page = await chat.open({ viewport, ...device });
    const longWord = 'x'.repeat(400);
    await say(page, 'short');
    await say(page, longWord);
    await waitForText(page, longWord);

    for (const selector of ['#input', '#send']) {
      assert.ok(await page.isVisible(selector), `${selector} is visible`);
      const box = await page.locator(selector).boundingBox();
      assert.ok(box.x >= 0 && box.y >= 0 && box.x + box.width <= viewport.width && box.y + box.height <= viewport.height,
        `${selector} lies inside the viewport: ${JSON.stringify(box)}`);
    }
    const layout = await page.evaluate(() => {
      const [short, long] = document.querySelectorAll('#messages > li.message');
      return {
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
        shortHeight: short.getBoundingClientRect().height,
        longHeight: long.getBoundingClientRect().height,
        longRight: long.getBoundingClientRect().right,
        longOverflows: long.scrollWidth > long.clientWidth,
      };
    });
    assert.equal(layout.innerWidth, viewport.width);
    assert.ok(layout.scrollWidth <= layout.innerWidth, `no horizontal scroll: ${JSON.stringify(layout)}`);
    assert.ok(layout.longRight <= layout.innerWidth && !layout.longOverflows, `the long word stays inside: ${JSON.stringify(layout)}`);
    assert.ok(layout.longHeight > 1.5 * layout.shortHeight, `the long word wraps onto several lines: ${JSON.stringify(layout)}`);
  }));
}

test('the list follows new messages, unless the reader has scrolled up', (t) => withChat(browser, t, async (chat) => {
  const reader = await chat.open({ viewport: { width: 360, height: 640 } });
  const writer = await chat.open();
  const distanceFromBottom = () => reader.$eval('#messages', (ul) => ul.scrollHeight - ul.scrollTop - ul.clientHeight);

  // Far more than one screen of messages, sent one after the other through the writer's form.
  const many = Array.from({ length: 40 }, (_, i) => `message ${i + 1}`);
  for (const text of many) await say(writer, text);
  await waitForText(reader, many.at(-1));
  assert.ok(await reader.$eval('#messages', (ul) => ul.scrollHeight > 2 * ul.clientHeight), 'the list overflows');
  assert.ok(await distanceFromBottom() <= 1, 'scrolled to the newest message');
  assert.ok(await reader.locator('#messages > li').last().isVisible());

  // The reader scrolls up with the mouse wheel to read something old; a new message must not pull
  // the view away.
  await reader.hover('#messages');
  await reader.mouse.wheel(0, -100_000);
  await reader.waitForFunction(() => document.getElementById('messages').scrollTop === 0);
  await say(writer, 'while reading');
  await waitForText(reader, 'while reading');
  assert.equal(await reader.$eval('#messages', (ul) => ul.scrollTop), 0, 'the view stayed where the reader put it');

  // Back at the bottom, the list follows again.
  await reader.mouse.wheel(0, 100_000);
  await reader.waitForFunction(() => {
    const ul = document.getElementById('messages');
    return ul.scrollHeight - ul.scrollTop - ul.clientHeight <= 1;
  });
  await say(writer, 'back at the bottom');
  await waitForText(reader, 'back at the bottom');
  assert.ok(await distanceFromBottom() <= 1, 'scrolled to the newest message again');
}));

// A new user follows docs/cluster.md to run two processes with Redis and chats
// across them in two browser tabs. Here each process listens on a port of its own, so tab A is
// certainly on one process and tab B on the other: every notice and message between them has gone
// through Redis.
test('tabs on two processes joined through Redis chat as one room', (t) => withCluster(browser, t, async (cluster) => {
  const one = await cluster.start();
  const two = await cluster.start();
  assert.notEqual(one.port, two.port);
  assert.notEqual(one.pid, two.pid);
  for (const server of [one, two]) assert.equal(await health(server), 'ok', 'Redis is up for both processes');
  await chatAcross(await cluster.open(one), () => cluster.open(two));
}));

// docs/cluster.md's own setup: both processes on one port with --reuse-port. The kernel picks a
// process for each connection (by a hash of its addresses and ports), so these two tabs may or may not
// share one, and the test cannot tell; the test above is the one that proves the path between
// processes. This one proves that the shared port serves the page and its WebSocket and that the
// tabs are one room, however the connections fell.
test('two processes share one port with --reuse-port, and two tabs on it chat', (t) => withCluster(browser, t, async (cluster) => {
  const one = await cluster.start({ args: ['--reuse-port'] });
  const two = await cluster.start({ port: one.port, args: ['--reuse-port'] });
  assert.equal(two.port, one.port, 'both processes listen on the one port');
  await chatAcross(await cluster.open(one), () => cluster.open(two));
}));

// Tab A is open and alone in the room; openB opens tab B. Then: B's join reaches A, a message each
// way (typed, then clicked) reaches both tabs once and in one order, and B's leaving reaches A.
async function chatAcross(a, openB) {
  await waitForCount(a, 1, 'notice'); // A's own join, before B exists, so A ends with exactly two
  const b = await openB();
  await waitForCount(b, 1, 'notice');
  await waitForCount(a, 2, 'notice');
  assert.equal(await a.textContent('#online'), '2 online');

  const fromA = 'Hello from tab A!';
  const fromB = 'Hello back from tab B.';
  await say(a, fromA);
  await waitForText(b, fromA);
  await say(b, fromB, { click: true });
  for (const page of [a, b]) await waitForText(page, fromB);
  const messages = [{ kind: 'message', text: fromA }, { kind: 'message', text: fromB }];
  assert.deepEqual(await entries(a), [{ kind: 'notice', text: YOU }, { kind: 'notice', text: JOINED }, ...messages]);
  assert.deepEqual(await entries(b), [{ kind: 'notice', text: YOU }, ...messages]);
  // Each tab knows its own message, also when it came back through Redis.
  assert.deepEqual(await mine(a), [fromA]);
  assert.deepEqual(await mine(b), [fromB]);

  await b.close();
  await waitForText(a, LEFT);
  assert.deepEqual((await entries(a)).slice(2), [...messages, { kind: 'notice', text: LEFT }]);
}

// What GET /healthz says: "ok", or "degraded" while Redis is unreachable (both with status 200).
async function health(server) {
  const response = await fetch(new URL('healthz', server.url));
  assert.equal(response.status, 200);
  return response.text();
}

// The picture docs/two-tabs.png: both pages side by side, composed by a third page from their
// screenshots.
async function writeSideBySide(a, b, file) {
  const [left, right] = await Promise.all([a.screenshot(), b.screenshot()]);
  const page = await browser.newPage({ viewport: { width: 992, height: 376 } });
  try {
    const img = (png) => `<img src="data:image/png;base64,${png.toString('base64')}" width="480" height="360">`;
    await page.setContent(`<body style="margin:0;padding:8px;display:flex;gap:16px;background:#d0d7de">${img(left)}${img(right)}</body>`);
    await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await page.screenshot({ path: file });
  } finally {
    await page.close();
  }
}

// --tls-cert: the page over https:// opens its WebSocket on wss://, and two tabs chat through it.
// Chromium is told to accept the self-signed certificate, as a user clicking through would.
test('over https, the page uses wss:// and two tabs chat', async (t) => {
  const tlsBrowser = await launchBrowser(['--ignore-certificate-errors']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mio-chat-tls-'));
  const { cert, key } = makeCert(dir);
  const server = await startServer(0, { args: ['--tls-cert', cert, '--tls-key', key] });
  const pages = pagesFor(tlsBrowser);
  const url = `https://localhost:${server.port}/`;
  const sockets = [];
  const open = async () => {
    const page = await pages.openOffline();
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await page.goto(url);
    await waitForState(page, 'online');
    return page;
  };
  try {
    const a = await open();
    await waitForCount(a, 1, 'notice');
    const b = await open();
    await waitForCount(a, 2, 'notice');
    await say(a, 'hello over TLS');
    await waitForText(b, 'hello over TLS');
    await say(b, 'and back', { click: true });
    await waitForText(a, 'and back');
    assert.deepEqual(sockets, [`wss://localhost:${server.port}/ws`, `wss://localhost:${server.port}/ws`]);
  } catch (err) {
    console.error(`-- server log for "${t.name}":\n${server.log.join('\n')}`);
    throw err;
  } finally {
    for (const context of pages.contexts) await context.close();
    await server.stop();
    await tlsBrowser.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
