'use strict';
// kvant finds the addon through this package's folder (lib/backend.ts) and test-loads it in a
// child process before using it, so a broken driver cannot take the host process down.
module.exports = { binary: require('path').join(__dirname, 'kvant_cuda.node') };
