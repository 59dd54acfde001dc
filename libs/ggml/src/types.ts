// ggml's tensor element types, as numbers (enum ggml_type) and names.

/** enum ggml_type, the values Strata reads or writes. */
export const GgmlType = {
  F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q8_1: 9,
  Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, Q8_K: 15,
  IQ2_XXS: 16, IQ2_XS: 17, IQ3_XXS: 18, IQ1_S: 19, IQ4_NL: 20, IQ3_S: 21, IQ2_S: 22, IQ4_XS: 23,
  I8: 24, I16: 25, I32: 26, I64: 27, F64: 28, IQ1_M: 29, BF16: 30, TQ1_0: 34, TQ2_0: 35, MXFP4: 39,
} as const;
export type GgmlType = (typeof GgmlType)[keyof typeof GgmlType];

/** enum ggml_prec */
export const GgmlPrec = { DEFAULT: 0, F32: 10 } as const;

/** GGML_ROPE_TYPE_* */
export const RopeType = { NORMAL: 0, NEOX: 2 } as const;

/** f16 bit patterns used in attention masks */
export const F16_ZERO = 0x0000;
export const F16_NEG_INF = 0xfc00;
