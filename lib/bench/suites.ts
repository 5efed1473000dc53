/**
 * The registered benchmarks: each kernel family keeps its cases in its own file
 * (lib/bench/<family>-cases.ts) and adds one line to allCases. Working sets of
 * bandwidth-bound kernels cycle through distinct copies of the data totalling at least
 * 4x the last-level cache, as a model's layers would, so caches cannot serve repeat runs.
 */
import { attentionCases } from './attention-cases';
import { convertCases } from './convert-cases';
import { quantCases } from './quant-cases';
import { gemmCases } from './gemm-cases';
import { BenchCase, Machine, judgedCopies } from './harness';

/**
 * Number of distinct copies of `bytesPerCopy` a bandwidth-bound case cycles through: the same
 * working set the read ceiling is measured over (harness `judgedCopies`: 8x LLC, >= 256 MiB),
 * so no family's rows are judged against a ceiling measured on a different footprint.
 */
export function copiesFor(bytesPerCopy: number, machine: Pick<Machine, 'llc_bytes'>, quick: boolean): number {
  return judgedCopies(bytesPerCopy, machine, quick);
}

export function allCases(machine: Machine, quick: boolean): BenchCase[] {
  return [
    ...convertCases(machine, quick),
    ...attentionCases(machine, quick),
    ...quantCases(machine, quick),
    ...gemmCases(machine, quick),
  ];
}
