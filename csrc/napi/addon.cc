// Init only registers exports; each binding file registers its own functions.
#include "addon.h"

#include <algorithm>
#include <vector>

namespace kvant::napi {

AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

namespace {
struct Entry {
  const char* name;
  RegisterFn fn;
  int order;
};
// Function-local static: safe against static-initialization order across files.
std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
}  // namespace

Registration::Registration(const char* name, RegisterFn fn, int order) { registry().push_back({name, fn, order}); }

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  std::vector<Entry> entries = registry();
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.order < b.order; });
  for (const Entry& e : entries) e.fn(env, exports);
  return exports;
}

}  // namespace kvant::napi

static Napi::Object kvantInit(Napi::Env env, Napi::Object exports) { return kvant::napi::init(env, exports); }
NODE_API_MODULE(kvant, kvantInit)
