import { Tensor } from '../tensor';
import { BenchCase, Machine } from './harness';
import { copiesFor } from './suites';

function conversionCase(from: 'f32' | 'f16' | 'bf16', to: 'f32' | 'f16' | 'bf16', numel: number, copies: number): BenchCase {
  const bytesPerRun = numel * ((from === 'f32' ? 4 : 2) + (to === 'f32' ? 4 : 2));
  let srcs: Tensor[] = [];
  let dsts: Tensor[] = [];
  return {
    name: from === to ? `copy ${from} ${numel}` : `convert ${from}->${to} ${numel}`,
    kernel: from === to ? 'copy' : 'convert',
    fields: { dtype: `${from}->${to}`, n: numel },
    bytes: bytesPerRun,
    ceiling: 'copy',
    warmup: copies,
    setup() {
      srcs = Array.from({ length: copies }, (_, i) => Tensor.random([numel], from, { seed: i + 1, native: true }));
      dsts = Array.from({ length: copies }, () => Tensor.zeros([numel], to, { native: true }));
      let i = 0;
      return () => {
        srcs[i].convertInto(dsts[i]);
        i = (i + 1) % copies;
      };
    },
    teardown() {
      for (const t of [...srcs, ...dsts]) t.dispose();
      srcs = [];
      dsts = [];
    },
  };
}

/** f16/bf16 <-> f32 conversion and a plain copy, judged against the copy bandwidth. */
export function convertCases(machine: Machine, quick: boolean): BenchCase[] {
  // 32 Mi elements: 128 MiB of f32 + 64 MiB of f16 per copy.
  const numel = quick ? 1 << 22 : 1 << 25;
  const copies = copiesFor(numel * 6, machine, quick);
  return [
    conversionCase('f32', 'f16', numel, copies),
    conversionCase('f16', 'f32', numel, copies),
    conversionCase('f32', 'bf16', numel, copies),
    conversionCase('bf16', 'f32', numel, copies),
    conversionCase('f32', 'f32', numel, copiesFor(numel * 8, machine, quick)),
  ];
}
