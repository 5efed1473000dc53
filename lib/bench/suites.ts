/**
 * The registered benchmarks: each kernel family keeps its cases in its own file
 * (lib/bench/<family>-cases.ts) and adds one line to allCases. Working sets of
 * bandwidth-bound kernels cycle through distinct copies of the data totalling at least
 * 4x the last-level cache, as a model's layers would, so caches cannot serve repeat runs.
 */
import { attentionCases } from './attention-cases';
import { convertCases } from './convert-cases';
import { quantCases } from './quant-cases';
import { BenchCase, Machine } from './harness';

/** Number of distinct copies of `bytesPerCopy` needed to exceed 4x LLC. */
export function copiesFor(bytesPerCopy: number, machine: Pick<Machine, 'llc_bytes'>, quick: boolean): number {
  if (quick) return 2;
  return Math.max(2, Math.ceil((4 * machine.llc_bytes) / bytesPerCopy));
}

export function allCases(machine: Machine, quick: boolean): BenchCase[] {
  return [
    ...convertCases(machine, quick),
    ...attentionCases(machine, quick),
    ...quantCases(machine, quick),
  ];
}
