// Who ran in a process, read from /proc: the run time of each kind of thread
// (the main thread, the agent's serving threads named kmsbridge-serve, and
// the others, such as libuv's pool).
import fs from 'node:fs';

/** Milliseconds each kind of thread of |pid| has run (schedstat). */
export function runTimes(pid) {
  const ms = { main: 0, serving: 0, others: 0 };
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    let ns;
    let name;
    try {
      ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue; // a thread that ended meanwhile
    }
    const kind = Number(tid) === pid ? 'main' : name === 'kmsbridge-serve' ? 'serving' : 'others';
    ms[kind] += ns / 1e6;
  }
  return ms;
}

/** The run times between two readings. */
export const since = (a, b) => Object.fromEntries(Object.keys(a).map((k) => [k, b[k] - a[k]]));

export const formatRunTimes = (r) => `main ${r.main.toFixed(1)} ms, serving threads ${r.serving.toFixed(1)} ms, other threads ${r.others.toFixed(1)} ms`;
