{
  # kmsbridge.node: compiled against Node's own OpenSSL headers (node-gyp puts
  # them on the include path) and deliberately not linked with -lcrypto: its
  # OpenSSL symbols bind to those the node binary exports.
  "targets": [
    {
      "target_name": "kmsbridge",
      "sources": [
        "src-native/node/addon.c",
        "src-native/node/peercred.c",
        "src-native/node/local_crypto.c"
      ],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-fvisibility=hidden"],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "OPENSSL_NO_DEPRECATED"]
    }
  ]
}
