/** Small helpers shared by the test suites. */
import { expect } from 'vitest';
import { KvantError, backendInfo } from '../../lib';

const ORDER = ['scalar', 'avx2', 'avx512'] as const;
export type Level = (typeof ORDER)[number];

/** The ISA levels this CPU runs, lowest first (optionally without AVX-512, for families that have no AVX-512 table). */
export function isaLevels(o: { avx512?: boolean } = {}): Level[] {
  const best = ORDER.indexOf(backendInfo().bestIsa);
  return ORDER.filter((l, i) => i <= best && (o.avx512 !== false || l !== 'avx512'));
}

/** The KvantError code `fn` throws ('no error' if it returns); any other exception fails the test. */
export function errorCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    return (e as KvantError).code;
  }
  return 'no error';
}
