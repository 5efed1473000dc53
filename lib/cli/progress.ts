/** A progress bar on stderr (tensor i of n, ETA); silent when stderr is not a terminal except for a final line. */
export interface ProgressBar {
  update(done: number, total: number, what?: string): void;
  done(): void;
}

export function progressBar(label: string): ProgressBar {
  const t0 = Date.now();
  const tty = process.stderr.isTTY;
  let last = 0;
  let lastLine = '';
  return {
    update(done, total, what = '') {
      const now = Date.now();
      const elapsed = (now - t0) / 1000;
      const eta = done > 0 ? (elapsed / done) * (total - done) : 0;
      const width = 24;
      const fill = Math.round((width * done) / Math.max(1, total));
      lastLine = `${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total} ETA ${eta.toFixed(0)}s ${what}`;
      if (tty && (now - last > 100 || done === total)) {
        process.stderr.write(`\r\x1b[2K${lastLine.slice(0, (process.stderr.columns ?? 100) - 1)}`);
        last = now;
      } else if (!tty && (now - last > 2000 || done === total)) {
        process.stderr.write(lastLine + '\n');
        last = now;
      }
    },
    done() {
      if (tty) process.stderr.write('\n');
    },
  };
}
