/** Element types. The numeric codes mirror csrc/include/kvant/dtype.h. */
export type DType = 'f32' | 'f16' | 'bf16' | 'i8' | 'u8' | 'i32';

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i8', 'u8', 'i32'];

const CODES: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i8: 3, u8: 4, i32: 5 };
const SIZES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i8: 1, u8: 1, i32: 4 };

export function dtypeCode(t: DType): number {
  return CODES[t];
}

export function dtypeSize(t: DType): number {
  return SIZES[t];
}

export function isDType(t: unknown): t is DType {
  return typeof t === 'string' && (DTYPES as readonly string[]).includes(t);
}

export function isFloatDType(t: DType): boolean {
  return t === 'f32' || t === 'f16' || t === 'bf16';
}

/** The typed array that holds a dtype's raw elements (f16/bf16 as their 16-bit patterns). */
export type TypedArrayFor<T extends DType> = T extends 'f32'
  ? Float32Array
  : T extends 'f16' | 'bf16'
    ? Uint16Array
    : T extends 'i8'
      ? Int8Array
      : T extends 'u8'
        ? Uint8Array
        : Int32Array;

export type ElementArray = Float32Array | Uint16Array | Int8Array | Uint8Array | Int32Array;
