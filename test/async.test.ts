import { describe, expect, it } from 'vitest';
import { KvantError, Tensor } from '../lib';

/**
 * Occupies kvant's FIFO job queue with a long conversion, so a job queued after it cannot
 * start before the test has aborted it: abort tests stay deterministic however fast the job is.
 */
function occupyQueue(): Promise<unknown> {
  return Tensor.random([1 << 25], 'f32', { seed: 1, native: true }).toAsync('f16', { native: true });
}

describe('long operations run off the event loop', () => {
  it('a timer keeps firing while a long conversion runs', async () => {
    const big = Tensor.random([1 << 26], 'f32', { seed: 5, native: true });
    let ticks = 0;
    let settled = false;
    const timer = setInterval(() => {
      if (!settled) ticks++;
    }, 1);
    const p = big.toAsync('f16', { native: true }).then((t) => {
      settled = true;
      return t;
    });
    expect(settled).toBe(false); // returned before the work was done
    const out = await p;
    clearInterval(timer);
    // The event loop ran timers while the 256 MiB conversion was in flight.
    expect(ticks).toBeGreaterThan(2);
    const want = big.slice(0, 1000).to('f16').data() as Uint16Array;
    expect(Array.from(out.slice(0, 1000).data() as Uint16Array)).toEqual(Array.from(want));
    big.dispose();
    out.dispose();
  });

  it('AbortSignal stops a long op with KVANT_ABORTED', async () => {
    const big = Tensor.random([1 << 24], 'f32', { seed: 6 });
    const ctl = new AbortController();
    const blocker = occupyQueue();
    const p = big.toAsync('bf16', { signal: ctl.signal });
    ctl.abort(); // set while the job still waits behind the blocker: it must stop at its first chunk check
    await blocker;
    await expect(p).rejects.toMatchObject({ code: 'KVANT_ABORTED' });
    await expect(p).rejects.toBeInstanceOf(KvantError);
  });

  it('an already-aborted signal rejects at once; a non-signal is a typed error', async () => {
    const t = Tensor.random([1024], 'f32');
    await expect(t.toAsync('f16', { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'KVANT_ABORTED' });
    await expect(t.toAsync('f16', { signal: {} as AbortSignal })).rejects.toMatchObject({ code: 'KVANT_DTYPE' });
  });

  it('async errors keep the caller stack', async () => {
    const t = Tensor.random([1 << 20], 'f32');
    const ctl = new AbortController();
    const blocker = occupyQueue();
    const p = t.toAsync('f16', { signal: ctl.signal });
    ctl.abort();
    await blocker;
    const err = (await p.catch((e: unknown) => e)) as KvantError;
    expect(err.code).toBe('KVANT_ABORTED');
    expect(err.stack).toContain('async.test.ts');
  });

  it('queued jobs complete in FIFO order', async () => {
    const order: number[] = [];
    const jobs = [0, 1, 2, 3].map((i) => Tensor.random([1 << 18], 'f32', { seed: i }).toAsync('f16').then(() => order.push(i)));
    await Promise.all(jobs);
    expect(order).toEqual([0, 1, 2, 3]);
  });
});
