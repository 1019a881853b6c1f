{
  # kmsbridge.node: the Node addon. The same C core as kmsbridge.so (wire
  # codec, channels, provider, ENGINE), compiled against Node's own OpenSSL headers
  # (node-gyp puts them on the include path) and deliberately NOT linked with
  # -lcrypto: its OpenSSL symbols bind to those the node binary exports.
  "targets": [
    {
      "target_name": "kmsbridge",
      "sources": [
        "src-native/node/addon.c",
        "src-native/node/local_crypto.c",
        "src-native/node/serve.c",
        "src-native/node/bridge.c",
        "src-native/node/grants.c",
        "src-native/node/pkcs11_sign.c",
        "src-native/node/register.c",
        "src-native/node/bench.c",
        "src-native/common/wire.c",
        "src-native/common/channel.c",
        "src-native/common/channel_agent.c",
        "src-native/common/keyref.c",
        "src-native/common/log.c",
        "src-native/common/names.c",
        "src-native/common/spin.c",
        "<!@(node -p \"require('fs').readdirSync('src-native/provider').filter(f => f.endsWith('.c')).map(f => 'src-native/provider/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('src-native/engine').filter(f => f.endsWith('.c')).map(f => 'src-native/engine/' + f).join(' ')\")"
      ],
      "include_dirs": ["src-native/common", "src-native/provider", "/usr/include/p11-kit-1"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-fvisibility=hidden", "-pthread"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "KB_NODE_ADDON"]
    }
  ]
}
