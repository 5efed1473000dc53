// Init only registers exports; each binding file registers its own functions.
#include "addon.h"

namespace kvant::napi {

AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  registerMemory(env, exports);
  registerSystem(env, exports);
  registerConvert(env, exports);
  registerProbe(env, exports);
  return exports;
}

}  // namespace kvant::napi

static Napi::Object kvantInit(Napi::Env env, Napi::Object exports) { return kvant::napi::init(env, exports); }
NODE_API_MODULE(kvant, kvantInit)
