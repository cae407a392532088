// Helpers for the browser tests in chat.test.js: start and stop the real server binary (and, for
// a room that spans processes, a redis-server of the test's own), launch Debian's Chromium through
// playwright-core, open chat pages, read what they show, and keep evidence (screenshots, the
// servers' logs) when a test fails. Nothing here builds anything: the binary comes from
// `cargo build`, the browser and redis-server from the system.
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');
const { chromium } = require('playwright-core');

// A relative MIO_CHAT_BIN is taken from this folder, where `npm test` runs.
const BIN = path.resolve(__dirname, process.env.MIO_CHAT_BIN || '../../target/debug/mio-chat');
const ARTIFACTS = path.join(__dirname, 'artifacts');

// Failure guards only: every wait below ends as soon as its condition holds. They are generous
// because CI machines are slow and shared; a passing run never waits them out.
const TIMEOUT = 20_000;
// A restart outlasts several of the page's reconnect attempts, and its back-off grows to 5 s.
const RECONNECT_TIMEOUT = 30_000;

// playwright-core ships no browser; it drives the system's. The flags keep a headless Chromium in
// a container quiet and self-contained: no sandbox (we run as root), no GPU, and no background
// traffic to Google services that could stall on a machine without Internet access.
const CHROMIUM = {
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
};

// `extraArgs`: more Chromium flags, e.g. --ignore-certificate-errors for a self-signed server.
function launchBrowser(extraArgs = []) {
  return chromium.launch({ ...CHROMIUM, args: [...CHROMIUM.args, ...extraArgs] });
}

// A self-signed ECDSA certificate for localhost and 127.0.0.1, made with the system's openssl
// (the same command as docs/tls.md's) in `dir`; returns the two file paths.
function makeCert(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const made = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-addext', 'basicConstraints=critical,CA:FALSE', '-keyout', key, '-out', cert,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (made.status !== 0) throw new Error(`openssl failed: ${made.stderr}`);
  return { cert, key };
}

// Every server still running, so that a crashed test run does not leave one behind.
const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

// Spawns a child that is killed if the test run exits, and a promise of how it ended.
function spawnTracked(command, args, stdio) {
  const child = spawn(command, args, { stdio });
  live.add(child);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  return { child, exited };
}

// Starts the server on `port` (0: any free port) and resolves once it has said where it listens.
// `args` go on its command line after `--addr`; `waitFor` (a RegExp), if given, is a log line to
// wait for as well before it counts as started, such as the Redis backplane's "subscribed".
async function startServer(port = 0, { args = [], waitFor = null } = {}) {
  const { child, exited } = spawnTracked(BIN, ['--addr', `127.0.0.1:${port}`, ...args], ['ignore', 'ignore', 'pipe']);
  // The log is kept for failure reports and read to the end all along: a full, unread stderr pipe
  // would block the server's next log line and with it the whole single-threaded event loop.
  const log = [];
  const waiters = new Set(); // of waitForLog: { pattern, resolve }
  const lines = readline.createInterface({ input: child.stderr });
  const first = new Promise((resolve, reject) => {
    lines.on('line', (line) => {
      if (log.push(line) === 1) resolve(line);
      for (const waiter of waiters) {
        if (waiter.pattern.test(line)) {
          waiters.delete(waiter);
          waiter.resolve(line);
        }
      }
    });
    child.on('error', (err) => reject(new Error(
      `cannot start ${BIN} (${err.message}): run \`cargo build\` first, or point MIO_CHAT_BIN at the binary`)));
    exited.then(({ code, signal }) => reject(new Error(
      `${BIN} exited (code ${code}, signal ${signal}) before it listened:\n${log.join('\n')}`)));
  });
  const line = await withTimeout(first, TIMEOUT, `${BIN} said nothing for ${TIMEOUT} ms`)
    .catch((err) => { child.kill('SIGKILL'); throw err; });
  const match = /^listening on 127\.0\.0\.1:(\d+)$/.exec(line);
  if (!match) {
    child.kill('SIGKILL');
    throw new Error(`unexpected first log line from ${BIN}: ${JSON.stringify(line)}`);
  }
  const bound = Number(match[1]);
  const server = {
    port: bound,
    url: `http://127.0.0.1:${bound}/`,
    pid: child.pid,
    log,
    exited,
    // Resolves with the first log line, already written or still to come, that matches `pattern`.
    waitForLog(pattern, timeout = TIMEOUT) {
      const seen = log.find((l) => pattern.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      const waiter = { pattern };
      const found = new Promise((resolve) => { waiter.resolve = resolve; });
      waiters.add(waiter);
      const gone = exited.then(({ code, signal }) => {
        throw new Error(`${BIN} exited (code ${code}, signal ${signal}) before it logged ${pattern}`);
      });
      return withTimeout(Promise.race([found, gone]), timeout, `${BIN} logged nothing like ${pattern} in ${timeout} ms`)
        .finally(() => waiters.delete(waiter));
    },
    // Graceful stop, as an operator would: resolves with how the process ended.
    stop() {
      child.kill('SIGTERM');
      return withTimeout(exited, TIMEOUT, 'server did not exit after SIGTERM');
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
    // SIGSTOP: the server holds every connection open and answers nothing until killed.
    pause() {
      child.kill('SIGSTOP');
    },
  };
  if (waitFor) {
    await server.waitForLog(waitFor).catch((err) => {
      child.kill('SIGKILL');
      throw new Error(`${err.message}; its log:\n${log.join('\n')}`);
    });
  }
  return server;
}

// The log line of a server started with `--redis` once its subscription is in place: from then on
// every join, message and leave on it reaches every process in the room, and theirs reach it.
const SUBSCRIBED = /^redis: subscribed to /;

// A redis-server of the caller's own, without persistence, on a free port of 127.0.0.1 (the same
// command line as tests/it/cluster.rs uses); resolves once it says on its stdout that it is ready.
// Rejects with err.code 'ENOENT' where redis-server is not installed.
async function startRedis() {
  // The free port is only free until someone takes it; should another process win that race,
  // Redis says so and exits, and a new port is tried.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRedisOn(await freePort());
    } catch (err) {
      if (!/Address already in use/.test(err.message) || attempt === 3) throw err;
    }
  }
}

async function startRedisOn(port) {
  const { child, exited } = spawnTracked('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--logfile', '',
  ], ['ignore', 'pipe', 'ignore']);
  // Read to the end, like the servers' logs, so that Redis never blocks on a full pipe.
  const log = [];
  const lines = readline.createInterface({ input: child.stdout });
  const ready = new Promise((resolve, reject) => {
    lines.on('line', (line) => {
      log.push(line);
      if (line.includes('Ready to accept connections')) resolve();
    });
    child.on('error', (err) => reject(Object.assign(new Error(`cannot start redis-server: ${err.message}`), { code: err.code })));
    exited.then(({ code, signal }) => reject(new Error(
      `redis-server on port ${port} exited (code ${code}, signal ${signal}) before it was ready:\n${log.join('\n')}`)));
  });
  await withTimeout(ready, TIMEOUT, `redis-server on port ${port} not ready within ${TIMEOUT} ms`)
    .catch((err) => { child.kill('SIGKILL'); throw err; });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    log,
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
    // SIGSTOP: the server holds every connection open and answers nothing until killed.
    pause() {
      child.kill('SIGSTOP');
    },
  };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function withTimeout(promise, ms, message) {
  let timer;
  const guard = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(message)), ms); });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

// Pages for one test, each in its own browser context (like a separate user, sharing no cookies,
// storage or sockets with the others); `contexts` is what teardown closes and failures save.
function pagesFor(browser) {
  const contexts = [];
  const pages = {
    contexts,
    // A new page on `url`, online.
    async open(url, options = {}) {
      const page = await pages.openOffline(options);
      await page.goto(url);
      await waitForState(page, 'online');
      return page;
    },
    // A page not yet pointed at a server, for tests that need to act before it loads.
    async openOffline({ viewport = { width: 800, height: 600 }, ...contextOptions } = {}) {
      const context = await browser.newContext({ viewport, ...contextOptions });
      context.setDefaultTimeout(TIMEOUT);
      contexts.push(context);
      return context.newPage();
    },
  };
  return pages;
}

// Runs one scenario against a fresh server (so join and leave counts start from nobody) and
// tears everything down afterwards, pass or fail. `body` gets a fixture:
//   chat.server            the running server (replaced by chat.startAgain())
//   chat.open(options)     a new page, in its own browser context (like a separate user), online
//   chat.openOffline(options)  a new page, in its own browser context, not yet loaded
//   chat.startAgain(args)  after chat.server.stop(): a new server on the same port, with `args`
//   chat.startGate()       a gate (see startGate) in front of the server, closed at teardown
// On failure every open page is saved to artifacts/ and the server's log is printed.
async function withChat(browser, t, body) {
  const pages = pagesFor(browser);
  const gates = [];
  const chat = {
    server: await startServer(),
    open(options) {
      return pages.open(chat.server.url, options);
    },
    openOffline(options) {
      return pages.openOffline(options);
    },
    async startAgain(args = []) {
      chat.server = await startServer(chat.server.port, { args });
    },
    async startGate() {
      const gate = await startGate(chat.server.port);
      gates.push(gate);
      return gate;
    },
  };
  try {
    await body(chat);
  } catch (err) {
    await saveScreenshots(t.name, pages.contexts);
    console.error(`-- server log for "${t.name}":\n${chat.server.log.join('\n')}`);
    throw err;
  } finally {
    for (const context of pages.contexts) await context.close().catch(() => {});
    for (const gate of gates) await gate.close();
    await chat.server.kill();
  }
}

// Runs one scenario in a room that spans several server processes, joined through a fresh
// redis-server of the scenario's own, and tears everything down afterwards, pass or fail. Where
// redis-server is not installed the test is skipped, except in CI (`CI` set), where it fails:
// the same rule as tests/it/cluster.rs. `body` gets a fixture:
//   cluster.redis                 the running redis-server
//   cluster.start(options)        a new server with `--redis`, once subscribed (see SUBSCRIBED);
//                                 options: `port` (default 0: a free one) and more `args`
//   cluster.open(server, options) a new page on that server, in its own browser context, online
// On failure every open page is saved to artifacts/ and every server's log and Redis's are printed.
async function withCluster(browser, t, body) {
  let redis;
  try {
    redis = await startRedis();
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
    if (process.env.CI) throw new Error(`redis-server is required in CI: ${err.message}`);
    t.skip('redis-server is not installed; CI installs it (apt-get install redis-server)');
    return;
  }
  const pages = pagesFor(browser);
  const servers = [];
  const cluster = {
    redis,
    async start({ port = 0, args = [] } = {}) {
      const server = await startServer(port, { args: ['--redis', redis.url, ...args], waitFor: SUBSCRIBED });
      servers.push(server);
      return server;
    },
    open(server, options) {
      return pages.open(server.url, options);
    },
  };
  try {
    await body(cluster);
  } catch (err) {
    await saveScreenshots(t.name, pages.contexts);
    for (const [i, server] of servers.entries()) {
      console.error(`-- log of server ${i + 1} (port ${server.port}, pid ${server.pid}) for "${t.name}":\n${server.log.join('\n')}`);
    }
    console.error(`-- redis-server log for "${t.name}":\n${redis.log.join('\n')}`);
    throw err;
  } finally {
    for (const context of pages.contexts) await context.close().catch(() => {});
    for (const server of servers) await server.kill();
    await redis.kill();
  }
}

async function saveScreenshots(testName, contexts) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const stem = testName.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase();
  const pages = contexts.flatMap((context) => context.pages());
  for (const [i, page] of pages.entries()) {
    const file = path.join(ARTIFACTS, `${stem}-page${i + 1}.png`);
    await page.screenshot({ path: file, timeout: 5_000 })
      .then(() => console.error(`-- screenshot: ${file}`))
      .catch((err) => console.error(`-- no screenshot of page ${i + 1}: ${err.message}`));
  }
}

// A TCP relay in front of the server that passes page loads through at once but holds every
// WebSocket handshake until release(): so a test can see the page's "connecting" state, which
// otherwise lasts a blink. (Intercepting the page with Playwright's page.route would not do: Chromium
// then no longer knows the page came from 127.0.0.1, and its Local Network Access checks block
// the page's WebSocket to 127.0.0.1.) hold() then stops passing on what the pages send (the
// server still reaches them): a page that went quiet, as the server sees it.
async function startGate(serverPort) {
  let release;
  const released = new Promise((resolve) => { release = resolve; });
  const sockets = new Set();
  let holding = false;
  const relay = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    client.once('data', async (head) => {
      client.pause(); // keep what follows the first chunk until the upstream is there to take it
      if (head.toString('latin1').startsWith('GET /ws')) await released;
      const upstream = net.connect(serverPort, '127.0.0.1', () => {
        upstream.write(head);
        client.on('data', (chunk) => { if (!holding) upstream.write(chunk); });
        client.resume();
        upstream.pipe(client);
      });
      sockets.add(upstream);
      upstream.on('close', () => { sockets.delete(upstream); client.destroy(); });
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
    });
  });
  await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${relay.address().port}/`,
    release,
    hold() {
      holding = true;
    },
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => relay.close(resolve));
    },
  };
}

// --- Reading and driving the page (its ids and classes are the contract, see src/chat.html) ---

function waitForState(page, state, timeout = TIMEOUT) {
  return page.waitForSelector(`#status[data-state="${state}"]`, { timeout });
}

// What #messages shows, oldest first, as { kind: 'message' | 'notice' | 'gap' | 'error', text }
// (the text without its time).
function entries(page) {
  return page.$$eval('#messages > li', (items) => items.map((li) => ({ kind: li.className, text: li.querySelector('.text').textContent })));
}

// The texts of the messages the page shows as its own (data-mine), oldest first.
function mine(page) {
  return page.$$eval('#messages > li.message[data-mine] .text', (items) => items.map((s) => s.textContent));
}

function texts(page, kind) {
  return entries(page).then((all) => all.filter((e) => e.kind === kind).map((e) => e.text));
}

// Waits until #messages holds exactly `count` entries of `kind` (or of any kind, if null).
function waitForCount(page, count, kind = null, timeout = TIMEOUT) {
  return page.waitForFunction(([n, k]) => {
    const selector = k ? `#messages > li.${k}` : '#messages > li';
    return document.querySelectorAll(selector).length === n;
  }, [count, kind], { timeout });
}

// Waits until an entry with exactly this text is shown.
function waitForText(page, text, timeout = TIMEOUT) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages > li .text')].some((s) => s.textContent === t),
    text, { timeout });
}

// Types into the box and submits, the way a person would: Enter, or a click on Send.
async function say(page, text, { click = false } = {}) {
  await page.fill('#input', text);
  if (click) await page.click('#send');
  else await page.press('#input', 'Enter');
}

module.exports = {
  makeCert,
  pagesFor,
  TIMEOUT,
  RECONNECT_TIMEOUT,
  launchBrowser,
  startServer,
  startRedis,
  SUBSCRIBED,
  withChat,
  withCluster,
  waitForState,
  entries,
  mine,
  texts,
  waitForCount,
  waitForText,
  say,
};
