// Build and push one layer with the original Node.js container-image-builder (3.2.0).
//
//   node node_driver.js BASE TARGET DIR
//
// The module is resolved from NODE_PATH (benchmarks/run.py installs it with npm into a cache
// directory outside the repository). Shim for the library's known bug: its chunked upload
// expects 204 from PATCH, where the distribution spec (and docker-registry) answer 202. We
// wrap the `request` module in require's cache before the library loads, so a PATCH answered
// 202 reaches the library's callback as 204. Nothing else is changed.
'use strict';
const path = require('path');

const libMain = require.resolve('container-image-builder');
const requestPath = require.resolve('request', { paths: [path.dirname(libMain)] });
const original = require(requestPath);

function patched(options, callback) {
  const method = (options && typeof options === 'object' && options.method) || '';
  if (String(method).toUpperCase() === 'PATCH' && typeof callback === 'function') {
    return original(options, (err, res, body) => {
      if (res && res.statusCode === 202) res.statusCode = 204;
      callback(err, res, body);
    });
  }
  return original.apply(this, arguments);
}
Object.assign(patched, original);
require.cache[requestPath].exports = patched;

const { Image } = require('container-image-builder');

(async () => {
  const [base, target, dir] = process.argv.slice(2);
  // The library knows no anonymous access: without auth options it insists on a docker
  // credential helper. The loopback registry is open and ignores these credentials.
  const auth = { '127.0.0.1': { Username: 'bench', Secret: 'bench' } };
  const image = new Image(base, target, { auth });
  await image.addFiles({ '/data': dir });
  const result = await image.save();
  console.log(JSON.stringify({ digest: result.digest }));
})().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
