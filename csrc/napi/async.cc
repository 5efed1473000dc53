// Promise-returning jobs on kvant's FIFO job queue. Completion crosses back to the JS
// thread through a thread-safe function, which also keeps the event loop alive while
// a job runs (and only then: an idle kvant never holds the process open).
#include <cstdio>

#include "addon.h"
#include "args.h"
#include "thread_pool.h"

namespace kvant::napi {
namespace {

struct Job {
  napi_deferred deferred = nullptr;
  napi_threadsafe_function tsfn = nullptr;
  std::vector<napi_ref> refs;
  std::vector<BlockRef> blocks;  // native memory stays valid even if disposed meanwhile
  std::function<AsyncResult()> work;
  std::function<Napi::Value(Napi::Env)> onOk;
  AsyncResult result;
};

void settle(napi_env rawEnv, napi_value, void*, void* data) {
  std::unique_ptr<Job> job(static_cast<Job*>(data));
  if (rawEnv == nullptr) return;  // environment shutting down (e.g. a terminated worker)
  Napi::Env env(rawEnv);
  Napi::HandleScope scope(env);
  for (napi_ref r : job->refs) napi_delete_reference(rawEnv, r);
  napi_value value;
  bool ok = job->result.status == Status::kOk;
  if (ok) {
    try {
      value = job->onOk(env);
    } catch (const Napi::Error& e) {
      ok = false;
      value = e.Value();
    }
    if (ok) {
      napi_resolve_deferred(rawEnv, job->deferred, value);
      return;
    }
  } else {
    Napi::Error err = Napi::Error::New(env, job->result.message);
    err.Set("code", Napi::String::New(env, statusCode(job->result.status)));
    value = err.Value();
  }
  napi_reject_deferred(rawEnv, job->deferred, value);
}

}  // namespace

Napi::Promise runAsync(Napi::Env env, const char* name, std::vector<Napi::Value> keepAlive,
                       std::function<AsyncResult()> work, std::function<Napi::Value(Napi::Env)> onOk) {
  auto job = std::make_unique<Job>();
  napi_value promise;
  NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &job->deferred, &promise), Napi::Promise());
  for (Napi::Value v : keepAlive) {
    if (!v.IsObject()) continue;
    napi_ref r;
    NAPI_THROW_IF_FAILED(env, napi_create_reference(env, v, 1, &r), Napi::Promise());
    job->refs.push_back(r);
    if (NativeMemory* m = NativeMemory::unwrapOrNull(env, v)) job->blocks.push_back(m->block());
  }
  job->work = std::move(work);
  job->onOk = std::move(onOk);
  napi_value resourceName = Napi::String::New(env, name);
  NAPI_THROW_IF_FAILED(env,
                       napi_create_threadsafe_function(env, nullptr, nullptr, resourceName, 0, 1, nullptr, nullptr,
                                                       nullptr, settle, &job->tsfn),
                       Napi::Promise());
  Job* raw = job.release();
  jobQueue().push([raw] {
    try {
      raw->result = raw->work();
    } catch (const std::bad_alloc&) {
      raw->result = {Status::kOom, "native allocation failed"};
    } catch (...) {
      raw->result = {Status::kBackend, "unexpected native exception"};
    }
    napi_threadsafe_function tsfn = raw->tsfn;
    // If the environment is gone the call fails and settle() never runs: free the job here.
    if (napi_call_threadsafe_function(tsfn, raw, napi_tsfn_blocking) != napi_ok) delete raw;
    napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  });
  return Napi::Promise(env, promise);
}

}  // namespace kvant::napi
