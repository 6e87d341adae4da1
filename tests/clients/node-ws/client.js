#!/usr/bin/env node
// Matrix client for Node.js `ws` (the WebSocket class, EventEmitter API). PROTOCOL.md is the contract.
// Run with NODE_PATH=/usr/share/nodejs (Debian node-ws); see `run`.
'use strict';

const fs = require('fs');
const WebSocket = require('ws');

function fnv(buf) {
  let h = 0x811c9dc5;
  for (const b of buf) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, '0');
}

function record(data, isBinary) {
  const raw = data; // a Buffer (the default binaryType), fragments already joined
  const small = raw.length <= 64;
  return { type: isBinary ? 'binary' : 'text', len: raw.length, fnv: fnv(raw),
           data: small ? (isBinary ? raw.toString('hex') : raw.toString('utf8')) : null };
}

async function runCase(c) {
  const r = { id: c.id, opened: false, status: null, protocol: null, messages: [], pongs: 0,
              code: null, reason: null, clean: null, error: null, unsupported: [], timeout: false };
  const errors = [];
  const start = Date.now();
  const deadline = start + (c.timeout_ms || 15000);
  let ended = false, done = false, wake = () => {};
  const notify = () => wake();
  // Resolves (still receiving) when cond() holds, the connection has ended, or `end` (ms since epoch) passes.
  const until = (cond, end = deadline) => new Promise((resolve) => {
    const check = () => {
      if (cond() || ended || Date.now() >= end) { clearTimeout(t); wake = () => {}; resolve(); }
    };
    const t = setTimeout(check, Math.max(0, end - Date.now()));
    wake = check;
    check();
  });
  const ev = (f) => (...a) => { if (!done) { f(...a); notify(); } }; // ignore events after the case is over

  const ws = new WebSocket(c.url, c.protocols || [], { maxPayload: 64 * 1024 * 1024 });
  ws.on('open', ev(() => { r.opened = true; r.status = 101; r.protocol = ws.protocol; }));
  ws.on('message', ev((data, isBinary) => r.messages.push(record(data, isBinary))));
  ws.on('pong', ev(() => { r.pongs += 1; }));
  ws.on('error', ev((err) => errors.push(err.message)));
  ws.on('close', ev((code, reason) => { r.code = code; r.reason = reason.toString(); ended = true; }));
  ws.addEventListener('close', ev((e) => { r.clean = e.wasClean; })); // ws's WHATWG-style CloseEvent
  ws.on('unexpected-response', ev((req, res) => {
    r.status = res.statusCode;
    res.on('error', () => {});
    res.resume();
    req.destroy(); // we took the response: ws emits nothing further for this connection
    ended = true;
  }));

  await until(() => r.opened);
  for (const step of r.opened ? c.steps || [] : []) {
    if (ended || Date.now() >= deadline) break;
    try {
      if ('send' in step) {
        if (step.send === 'binary') ws.send(Buffer.from(step.hex, 'hex'));
        else if (step.send === 'fragments') step.parts.forEach((p, i) => ws.send(p, { fin: i === step.parts.length - 1 }));
        else ws.send('repeat' in step ? step.repeat.repeat(step.times) : step.data);
      } else if ('expect' in step) {
        await until(() => r.messages.length >= step.expect);
      } else if ('ping' in step) {
        const before = r.pongs;
        ws.ping(Buffer.from(step.ping, 'utf8'));
        await until(() => r.pongs > before);
      } else if ('sleep_ms' in step) {
        await until(() => false, Math.min(deadline, Date.now() + step.sleep_ms));
      } else if ('close' in step) {
        ws.close(step.close, step.reason || '');
      }
    } catch (err) {
      errors.push(err.message);
    }
  }
  await until(() => false);
  if (!ended) { r.timeout = true; ws.terminate(); }
  done = true;
  r.error = errors.length ? errors.join(' | ') : null;
  r.elapsed_ms = Date.now() - start;
  return r;
}

async function main() {
  if (process.argv[2] === '--version') {
    console.log(`ws ${require('ws/package.json').version}, node ${process.version}`);
    return;
  }
  for (const c of JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))) {
    const line = JSON.stringify(await runCase(c)) + '\n';
    await new Promise((res) => process.stdout.write(line, res));
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
