// What TypeScript sees of pkcs11js when the optional package did not install (its own types win when it did): the
// build must not fail for an optional binding. At run time backends/pkcs11/library.ts then reports the missing
// binding by name, with the command that builds it.
declare module 'pkcs11js' {
  export type PKCS11 = any;
  export const PKCS11: any;
  export type TokenInfo = any;
  export type Template = any;
  export type Mechanism = any;
  export type RsaPSS = any;
  export type RsaOAEP = any;
  export type ECDH1 = any;
}
