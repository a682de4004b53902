// Runs a wasm32-wasi guest under Node.js's node:wasi with its wasi_ephemeral_nn imports bridged
// to libwasi_nn_llamacpp.so through nn_host (a native process that dlopen()s the backend), over
// two FIFOs read and written synchronously (a WASI import must return its result synchronously).
//   node run_guest.mjs NN_HOST LIB GUEST.wasm [guest args...]
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WASI } from 'node:wasi';

const [host, lib, wasmPath, ...args] = process.argv.slice(2);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wasi-nn-'));
const reqPath = path.join(dir, 'req'), repPath = path.join(dir, 'rep');
execFileSync('mkfifo', [reqPath, repPath]);
const child = spawn(host, [lib, reqPath, repPath], { stdio: ['ignore', 'inherit', 'inherit'] });
const req = fs.openSync(reqPath, 'w');  // blocks until nn_host opens its end
const rep = fs.openSync(repPath, 'r');

function readExact(n) {
  const b = Buffer.alloc(n);
  for (let off = 0; off < n;) {
    const k = fs.readSync(rep, b, off, n - off, null);
    if (k === 0) throw new Error('nn_host exited');
    off += k;
  }
  return b;
}
function call(op, a, b, bytes1 = Buffer.alloc(0), bytes2 = Buffer.alloc(0)) {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(op, 0); h.writeUInt32LE(a >>> 0, 4); h.writeUInt32LE(b >>> 0, 8);
  h.writeUInt32LE(bytes1.length, 12);
  const l2 = Buffer.alloc(4); l2.writeUInt32LE(bytes2.length, 0);
  fs.writeSync(req, Buffer.concat([h, bytes1, l2, bytes2]));
  const r = readExact(12);
  const len = r.readUInt32LE(8);
  return { err: r.readUInt32LE(0), value: r.readUInt32LE(4), data: len ? readExact(len) : Buffer.alloc(0) };
}

let memory;
const mem = () => new DataView(memory.buffer);
const bytes = (ptr, len) => Buffer.from(new Uint8Array(memory.buffer, ptr, len));  // a copy
const nn = {
  load_by_name(name, nameLen, graphPtr) {
    const r = call(6, 0, 0, bytes(name, nameLen));
    if (!r.err) mem().setUint32(graphPtr, r.value, true);
    return r.err;
  },
  load_by_name_with_config(name, nameLen, cfg, cfgLen, graphPtr) {
    const r = call(1, 0, 0, bytes(name, nameLen), bytes(cfg, cfgLen));
    if (!r.err) mem().setUint32(graphPtr, r.value, true);
    return r.err;
  },
  init_execution_context(graph, ctxPtr) {
    const r = call(2, graph, 0);
    if (!r.err) mem().setUint32(ctxPtr, r.value, true);
    return r.err;
  },
  set_input(ctx, index, tensorPtr) {
    if (index !== 0) return 1;  // invalid_argument
    const m = mem();  // wasm32 tensor: dims {buf, size} @0, type u8 @8, data {buf, size} @12
    const type = m.getUint8(tensorPtr + 8);
    const buf = m.getUint32(tensorPtr + 12, true), size = m.getUint32(tensorPtr + 16, true);
    return call(3, ctx, type, bytes(buf, size)).err;
  },
  compute(ctx) { return call(4, ctx, 0).err; },
  get_output(ctx, index, outPtr, outMax, writtenPtr) {
    const max = Buffer.alloc(4); max.writeUInt32LE(outMax, 0);
    const r = call(5, ctx, index, Buffer.alloc(0), max);
    if (!r.err) {
      new Uint8Array(memory.buffer, outPtr, r.data.length).set(r.data);
      mem().setUint32(writtenPtr, r.data.length, true);
    }
    return r.err;
  },
};

const wasi = new WASI({ version: 'preview1', args: [path.basename(wasmPath), ...args], env: {} });
const module = await WebAssembly.compile(fs.readFileSync(wasmPath));
const instance = await WebAssembly.instantiate(module, { ...wasi.getImportObject(), wasi_ephemeral_nn: nn });
memory = instance.exports.memory;
let code = 0;
try {
  code = wasi.start(instance);
} finally {
  fs.closeSync(req);  // nn_host sees EOF, frees the backend and exits
  fs.closeSync(rep);
  await new Promise((res) => child.on('exit', res));
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(code ?? 0);
