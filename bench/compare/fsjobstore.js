// Driver for the anchor `fs-job-store` 1.2.0 (installed by `run setup` into a temporary folder;
// NODE_PATH points there). Prints one `key=value` line prefixed `RESULT `.
//   node fsjobstore.js create DIR N     create N jobs
//   node fsjobstore.js drain DIR        pullJob + fulfill + release until the pending dir is empty
//   node fsjobstore.js notify DIR N     set up N fulfilled jobs with one target each, then drain
//                                       them with pullNotification + done
// TMPDIR must be on the same filesystem as DIR: the store renames its temporary directories
// into place.
'use strict';
const fs = require('fs');
const path = require('path');
const JobStore = require('fs-job-store');
console.log = () => {}; // the package prints "TODO ..." lines on stdout
const [mode, dir, nArg] = process.argv.slice(2);
fs.mkdirSync(dir, { recursive: true });
const store = new JobStore({ dir });
// A callback-taking call as a promise, failed after STALL_MS: under contention the package
// sometimes never calls back (seen with 4 workers); the driver counts those as stalls.
const STALL_MS = 5000;
let stalls = 0;
const p = (f) => new Promise((res, rej) => {
  const t = setTimeout(() => { stalls++; rej(new Error('stalled')); }, STALL_MS);
  f((e, v) => { clearTimeout(t); e ? rej(e) : res(v); });
});
const now = () => Date.now() / 1000;
const out = (o) => process.stdout.write('RESULT ' + Object.entries(o).map(([k, v]) => `${k}=${v}`).join(' ') + '\n');

function pendingLeft() {
  try {
    return fs.readdirSync(path.join(dir, 'pending')).filter((n) => !n.endsWith('.lock')).length;
  } catch (e) {
    return 0;
  }
}

async function create(n) {
  const start = now();
  for (let i = 0; i < n; i++) await p((cb) => store.create({ calculate: `${i}+${i}`, n: i }, cb));
  const end = now();
  out({ mode: 'create', count: n, start: start.toFixed(6), end: end.toFixed(6), secs: (end - start).toFixed(4), jobs_per_s: (n / (end - start)).toFixed(1) });
}

async function drain() {
  const start = now();
  let end = start, count = 0, misses = 0;
  for (;;) {
    let job;
    try {
      job = await p((cb) => store.pullJob(cb));
      if (!job || !job.id) throw new Error('no job');
    } catch (e) {
      if (stalls > 20) break;
      // pullJob errors when it finds no unlocked pending job: stop once none is left.
      if (pendingLeft() === 0) break;
      misses++;
      await new Promise((r) => setTimeout(r, 5));
      continue;
    }
    try {
      await p((cb) => store.fulfill(job.id, '42', cb));
    } catch (e) {
      misses++;
    }
    await p((cb) => job.release(cb)).catch(() => {});
    count++;
    end = now();
  }
  out({ mode: 'drain', count, start: start.toFixed(6), end: end.toFixed(6), secs: (end - start).toFixed(4), jobs_per_s: (count / (end - start)).toFixed(1), misses, stalls });
  process.exit(0);
}

async function notify(n) {
  for (let i = 0; i < n; i++) {
    const { id } = await p((cb) => store.create({ n: i }, cb));
    await p((cb) => store.queue(id, { email: `user${i}@example.com` }, cb));
    // Fulfil without flushing: a store with `respond` unset delivers nothing itself.
    await p((cb) => store.fulfill(id, '42', cb));
  }
  const start = now();
  let count = 0, errors = 0;
  while (count < n) {
    let note;
    try {
      note = await p((cb) => store.pullNotification(cb));
      if (!note || !note.id) throw new Error('no notification');
    } catch (e) {
      errors++;
      if (errors > 50) break;
      continue;
    }
    await p((cb) => note.done(null, note.waiting, cb)).catch(() => { errors++; });
    count++;
  }
  const end = now();
  out({ mode: 'notify', count, start: start.toFixed(6), end: end.toFixed(6), secs: (end - start).toFixed(4), jobs_per_s: (count / (end - start)).toFixed(1), errors, stalls });
  process.exit(0);
}

(async () => {
  if (mode === 'create') await create(parseInt(nArg, 10));
  else if (mode === 'drain') await drain();
  else if (mode === 'notify') await notify(parseInt(nArg, 10));
  else throw new Error('mode: create|drain|notify');
})().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });
