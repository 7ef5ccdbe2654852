#include "app/slab_reconciler.h"

#include <spdlog/spdlog.h>

#include "kernel/host_info.h"

namespace kleak {

void SlabReconciler::name_new_caches(const core::Tracker& tracker) {
    for (const std::uint64_t cache : core::unnamed_caches(tracker, names_)) {
        if (unreadable_.contains(cache)) continue;
        if (auto info = tracer_.cache_info(cache)) {
            names_.emplace(cache, std::move(*info));
        } else {
            unreadable_.insert(cache);
            spdlog::debug("slab cache at {:#x} could not be named", cache);
        }
    }
}

core::Reconciliation SlabReconciler::reconcile(const core::Tracker& tracker, const core::ReconcileRules& rules) {
    name_new_caches(tracker);
    ++slabinfo_reads_;
    std::string error;
    core::SlabinfoParse parsed;
    if (const auto text = read_slabinfo(error)) {
        parsed = core::parse_slabinfo(*text);
        error = parsed.error;
    }
    if (!error.empty()) {
        // Once, then quietly counted: a host without SLUB statistics stays that way.
        if (slabinfo_errors_++ == 0) spdlog::warn("{}; verdicts go on without the kernel's slab counts", error);
        last_error_ = error;
    }
    return core::reconcile_caches(tracker, names_, parsed.rows, rules);
}

std::vector<std::string> SlabReconciler::site_caches(const core::Tracker& tracker) {
    name_new_caches(tracker);
    return core::site_cache_names(tracker, names_);
}

nlohmann::json SlabReconciler::stats() const {
    return {{"named", names_.size()},
            {"unnamed", unreadable_.size()},
            {"slabinfo_reads", slabinfo_reads_},
            {"slabinfo_errors", slabinfo_errors_},
            {"last_error", last_error_}};
}

}  // namespace kleak
