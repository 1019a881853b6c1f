/**
 * The PKCS#11 numbers the backend uses, from the OASIS PKCS#11 3.0 base
 * specification. Kept here (not taken from pkcs11js) so the binding is only
 * loaded when a PKCS#11 keyring is used, and because pkcs11js 2 lacks the 3.0
 * Edwards-curve values.
 */

// object classes and key types
export const CKO_PUBLIC_KEY = 0x2;
export const CKO_PRIVATE_KEY = 0x3;
export const CKO_SECRET_KEY = 0x4;
export const CKO_CERTIFICATE = 0x1;
export const CKO_DATA = 0x0;
export const CKK_RSA = 0x0;
export const CKK_EC = 0x3;
export const CKK_GENERIC_SECRET = 0x10;
export const CKK_EC_EDWARDS = 0x40;

// attributes
export const CKA_CLASS = 0x0;
export const CKA_TOKEN = 0x1;
export const CKA_PRIVATE = 0x2;
export const CKA_LABEL = 0x3;
export const CKA_VALUE = 0x11;
export const CKA_KEY_TYPE = 0x100;
export const CKA_ID = 0x102;
export const CKA_SENSITIVE = 0x103;
export const CKA_ENCRYPT = 0x104;
export const CKA_DECRYPT = 0x105;
export const CKA_SIGN = 0x108;
export const CKA_VERIFY = 0x10a;
export const CKA_DERIVE = 0x10c;
export const CKA_MODULUS = 0x120;
export const CKA_MODULUS_BITS = 0x121;
export const CKA_PUBLIC_EXPONENT = 0x122;
export const CKA_PUBLIC_KEY_INFO = 0x129;
export const CKA_VALUE_LEN = 0x161;
export const CKA_EXTRACTABLE = 0x162;
export const CKA_NEVER_EXTRACTABLE = 0x164;
export const CKA_ALWAYS_SENSITIVE = 0x165;
export const CKA_EC_PARAMS = 0x180;
export const CKA_EC_POINT = 0x181;
export const CKA_ALWAYS_AUTHENTICATE = 0x202;

// mechanisms
export const CKM_RSA_PKCS_KEY_PAIR_GEN = 0x0;
export const CKM_RSA_PKCS = 0x1;
export const CKM_RSA_PKCS_OAEP = 0x9;
export const CKM_RSA_PKCS_PSS = 0xd;
export const CKM_SHA_1 = 0x220;
export const CKM_SHA224 = 0x255;
export const CKM_SHA256 = 0x250;
export const CKM_SHA384 = 0x260;
export const CKM_SHA512 = 0x270;
export const CKM_EC_KEY_PAIR_GEN = 0x1040;
export const CKM_ECDSA = 0x1041;
export const CKM_ECDH1_DERIVE = 0x1050;
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;

export const MECHANISM_NAMES: Record<number, string> = {
  [CKM_RSA_PKCS_KEY_PAIR_GEN]: 'CKM_RSA_PKCS_KEY_PAIR_GEN',
  [CKM_RSA_PKCS]: 'CKM_RSA_PKCS',
  [CKM_RSA_PKCS_OAEP]: 'CKM_RSA_PKCS_OAEP',
  [CKM_RSA_PKCS_PSS]: 'CKM_RSA_PKCS_PSS',
  [CKM_EC_KEY_PAIR_GEN]: 'CKM_EC_KEY_PAIR_GEN',
  [CKM_ECDSA]: 'CKM_ECDSA',
  [CKM_ECDH1_DERIVE]: 'CKM_ECDH1_DERIVE',
  [CKM_EC_EDWARDS_KEY_PAIR_GEN]: 'CKM_EC_EDWARDS_KEY_PAIR_GEN',
  [CKM_EDDSA]: 'CKM_EDDSA',
};

// mechanism parameters
export const CKG_MGF1_SHA1 = 0x1;
export const CKG_MGF1_SHA256 = 0x2;
export const CKG_MGF1_SHA384 = 0x3;
export const CKG_MGF1_SHA512 = 0x4;
export const CKG_MGF1_SHA224 = 0x5;
export const CKZ_DATA_SPECIFIED = 0x1;
export const CKD_NULL = 0x1;
/** pkcs11js's tags for structured mechanism parameters. */
export const CK_PARAMS_RSA_OAEP = 4;
export const CK_PARAMS_RSA_PSS = 5;
export const CK_PARAMS_EC_DH = 6;

// sessions, users, flags
export const CKF_RW_SESSION = 0x2;
export const CKF_SERIAL_SESSION = 0x4;
export const CKF_OS_LOCKING_OK = 0x2;
export const CKU_USER = 1;
export const CKU_CONTEXT_SPECIFIC = 2;
export const CKF_TOKEN_PRESENT = 0x1;
export const CKF_LOGIN_REQUIRED = 0x4;
export const CKF_USER_PIN_INITIALIZED = 0x8;
export const CKF_TOKEN_INITIALIZED = 0x400;
export const CKF_USER_PIN_COUNT_LOW = 0x10000;
export const CKF_USER_PIN_FINAL_TRY = 0x20000;
export const CKF_USER_PIN_LOCKED = 0x40000;
export const CKF_USER_PIN_TO_BE_CHANGED = 0x80000;

// return values the backend acts on
export const CKR_SLOT_ID_INVALID = 0x3;
export const CKR_ARGUMENTS_BAD = 0x7;
export const CKR_ATTRIBUTE_SENSITIVE = 0x11;
export const CKR_ATTRIBUTE_TYPE_INVALID = 0x12;
export const CKR_ATTRIBUTE_VALUE_INVALID = 0x13;
export const CKR_DATA_INVALID = 0x20;
export const CKR_DATA_LEN_RANGE = 0x21;
export const CKR_DEVICE_ERROR = 0x30;
export const CKR_DEVICE_REMOVED = 0x32;
export const CKR_ENCRYPTED_DATA_INVALID = 0x40;
export const CKR_ENCRYPTED_DATA_LEN_RANGE = 0x41;
export const CKR_KEY_HANDLE_INVALID = 0x60;
export const CKR_KEY_SIZE_RANGE = 0x62;
export const CKR_KEY_TYPE_INCONSISTENT = 0x63;
export const CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68;
export const CKR_MECHANISM_INVALID = 0x70;
export const CKR_MECHANISM_PARAM_INVALID = 0x71;
export const CKR_OBJECT_HANDLE_INVALID = 0x82;
export const CKR_PIN_INCORRECT = 0xa0;
export const CKR_PIN_INVALID = 0xa1;
export const CKR_PIN_LEN_RANGE = 0xa2;
export const CKR_PIN_EXPIRED = 0xa3;
export const CKR_PIN_LOCKED = 0xa4;
export const CKR_SESSION_CLOSED = 0xb0;
export const CKR_SESSION_COUNT = 0xb1;
export const CKR_SESSION_HANDLE_INVALID = 0xb3;
export const CKR_TEMPLATE_INCONSISTENT = 0xd1;
export const CKR_TOKEN_NOT_PRESENT = 0xe0;
export const CKR_TOKEN_NOT_RECOGNIZED = 0xe1;
export const CKR_USER_ALREADY_LOGGED_IN = 0x100;
export const CKR_USER_NOT_LOGGED_IN = 0x101;
export const CKR_USER_PIN_NOT_INITIALIZED = 0x102;
export const CKR_DOMAIN_PARAMS_INVALID = 0x130;
export const CKR_CURVE_NOT_SUPPORTED = 0x140;
export const CKR_CRYPTOKI_NOT_INITIALIZED = 0x190;
export const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
export const CKR_CANT_LOCK = 0xa;
