/** Terminal output for the CLI: one clear line per error, progress only on a terminal. */
import type { Progress } from '../backends/backend.js';

export function progressOnTerminal(): { progress: Progress; done: () => void } {
  if (!process.stderr.isTTY) return { progress: () => {}, done: () => {} };
  const frames = ['|', '/', '-', '\\'];
  let message = '';
  let i = 0;
  const started = Date.now();
  const draw = () => process.stderr.write(`\r${frames[i++ % frames.length]} ${message} (${((Date.now() - started) / 1000).toFixed(1)} s)\x1b[K`);
  let timer: NodeJS.Timeout | undefined;
  return {
    progress: (m) => {
      message = m;
      timer ??= setInterval(draw, 120);
      draw();
    },
    done: () => {
      if (timer) {
        clearInterval(timer);
        process.stderr.write('\r\x1b[K');
      }
    },
  };
}
