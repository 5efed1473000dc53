{
  # The CPU addon kvant.node. Each ISA level is its own static library compiled with its
  # own flags, so AVX2/AVX-512 instructions can only appear in those objects; the level is
  # chosen at load time from CPUID (csrc/cpu/isa.cc). Never -march=native.
  "variables": {
    "kvant_common_cflags": ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
  },
  "targets": [
    {
      "target_name": "kvant",
      "sources": ["<!@(node scripts/gyp-sources.js base)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "csrc/include", "csrc/cpu", "csrc/napi"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["<@(kvant_common_cflags)"],
      # -z nodelete: the addon starts process-lifetime threads (the kernel pool, the job queue)
      # whose code lives in this library; Node unloads an addon when the last worker_thread
      # that loaded it exits, and a pool thread still running (spinning for its next task)
      # would then execute unmapped code.
      "ldflags": ["-pthread", "-Wl,-z,nodelete"],
      "conditions": [
        ["target_arch=='x64'", {"dependencies": ["kvant_avx2", "kvant_avx512"]}],
        ["OS=='linux' and target_arch=='x64'", {"ldflags": ["-static-libstdc++", "-static-libgcc"]}]
      ]
    }
  ],
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "kvant_avx2",
          "type": "static_library",
          "sources": ["<!@(node scripts/gyp-sources.js avx2)"],
          "include_dirs": ["csrc/include", "csrc/cpu"],
          "cflags_cc!": ["-std=gnu++17"],
          "cflags_cc": ["<@(kvant_common_cflags)", "-mavx2", "-mfma", "-mf16c"]
        },
        {
          "target_name": "kvant_avx512",
          "type": "static_library",
          "sources": ["<!@(node scripts/gyp-sources.js avx512)"],
          "include_dirs": ["csrc/include", "csrc/cpu"],
          "cflags_cc!": ["-std=gnu++17"],
          "cflags_cc": ["<@(kvant_common_cflags)", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                        "-Wno-uninitialized", "-Wno-maybe-uninitialized"]
        }
      ]
    }]
  ]
}
