#include "app/state_keeping.h"

#include <spdlog/spdlog.h>
#include <time.h>

#include <chrono>

#include "kernel/bpf_tracer.h"
#include "core/sizes.h"
#include "kernel/host_info.h"
#include "kleak_abi.h"
#include "version.h"

namespace kleak {

namespace {

// Which build's image fits: the version, the record ABI and the BPF object
// itself (a rebuilt object can mean other records under the same ABI).
core::StateOrigin this_origin() {
    return {std::string(kKleakdVersion) + "+abi" + std::to_string(KLEAK_ABI_VERSION) + "+bpf-" + bpf_object_digest(),
            boot_id()};
}

// Wall time spent, for the log and stats: CLOCK_MONOTONIC (the records' clock).
double elapsed_ms(std::chrono::steady_clock::time_point since) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

std::uint64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

StateKeeping::StateKeeping(std::vector<UniqueFd> stored, core::Pipeline& pipeline, core::PrintkLog* printk,
                           core::SiteVerdicts& verdicts)
    : here_(this_origin()) {
    if (stored.empty()) {
        if (store_.active()) spdlog::info("no stored state: tracing starts fresh");
        return;
    }
    // Two images: a store raced a crash (fd_store.cpp removes first, so this
    // should not happen); the newest is the last one passed.
    const UniqueFd& fd = stored.back();
    const auto start = std::chrono::steady_clock::now();
    std::string error;
    const auto bytes = service::read_whole_fd(fd.get(), error);
    if (!bytes) {
        refused_ = error;
        spdlog::warn("stored state not used ({}): tracing starts fresh", error);
        return;
    }
    core::LoadedState loaded = core::read_state_image(*bytes, here_, pipeline.tracker_to_restore(), printk);
    load_ms_ = elapsed_ms(start);
    if (!loaded.meta) {
        refused_ = loaded.error;
        spdlog::warn("stored state refused ({}): tracing starts fresh", loaded.error);
        store_.remove();
        return;
    }
    restored_from_ = core::state_kind_name(loaded.meta->kind);
    image_tracked_until_ns_ = loaded.meta->written_ns;
    restored_outstanding_ = pipeline.tracker().totals().outstanding;
    // The image's histories are newer than the last snapshot's.
    verdicts.clear();
    verdicts.restore(std::move(loaded.histories));
    spdlog::info("state restored from the {} image of {} ({} bytes, loaded in {:.1f} ms): {} outstanding allocations, {} "
                 "sites; not traced since {:.1f} s ago",
                 restored_from_, loaded.meta->origin.build_id == here_.build_id ? "this build" : loaded.meta->origin.build_id,
                 bytes->size(), load_ms_, restored_outstanding_, pipeline.tracker().sites().size(),
                 static_cast<double>(monotonic_ns() - std::min(monotonic_ns(), image_tracked_until_ns_)) / 1e9);
}

void StateKeeping::save(core::StateKind kind, std::uint64_t tracked_until_ns, const core::Pipeline& pipeline,
                        const core::PrintkLog* printk, const core::SiteVerdicts& verdicts) {
    if (!store_.active()) return;
    const auto start = std::chrono::steady_clock::now();
    std::optional<std::string> error;
    try {
        const core::StateMeta meta{here_, kind, tracked_until_ns, pipeline.records(), {}};
        const std::vector<std::byte> image = core::write_state_image(meta, pipeline.tracker(), printk, &verdicts);
        last_image_bytes_ = image.size();
        error = store_.store(image);
    } catch (const std::exception& e) {  // allocation failure: the previous image stays stored
        error = std::string("cannot build the state image: ") + e.what();
    }
    last_save_ms_ = elapsed_ms(start);
    if (error) {
        if (save_failures_++ % 60 == 0) spdlog::warn("storing the state failed: {}", *error);
        return;
    }
    ++saves_;
    if (kind == core::StateKind::clean_stop)
        spdlog::info("state stored with systemd ({} bytes, {:.1f} ms) for the next start", last_image_bytes_,
                     last_save_ms_);
}

void StateKeeping::store_ring_tail(UniqueFd tail) {
    if (!tail) return;
    if (const auto error = store_.store_ring_tail(tail.get()))
        spdlog::warn("handing the ring tail to systemd failed ({}): the records in it are lost", *error);
}

void StateKeeping::keep_programs(const BpfTracer& tracer, const HandedReading& reading, std::uint64_t started_ns) {
    programs_ = continuity_name(tracer.continuity());
    if (!store_.active()) return;
    if (tracer.continuity() == Continuity::adopted) {
        programs_kept_ = true;  // still in the store, as they were handed over
        if (restored_from_ == core::state_kind_name(core::StateKind::clean_stop)) {
            tracing_started_ns_ = image_tracked_until_ns_;  // the programs never stopped: no gap
            rings_unread_from_ns_ = std::max(reading.previous_read_until_ns, image_tracked_until_ns_);
            rings_read_since_ns_ = reading.since_ns != 0 ? reading.since_ns : started_ns;
            tail_bytes_ = reading.tail_bytes;
            spdlog::info("the adopted rings went unread for {:.1f} ms across the restart ({} read by the previous "
                         "kleakd after its last drain, handed over)",
                         static_cast<double>(*unread_ns()) / 1e6, core::format_size(tail_bytes_));
        }
        return;
    }
    programs_kept_ = store_programs(tracer);
}

void StateKeeping::programs_changed(const BpfTracer& tracer) {
    if (programs_kept_) programs_kept_ = store_programs(tracer);
}

bool StateKeeping::store_programs(const BpfTracer& tracer) {
    // Replaces the set stored before, if any: links no longer in it detach.
    const auto fds = tracer.handover_fds();
    if (const auto error = store_.store_bpf_set(tracer.identity(), fds)) {
        spdlog::warn("handing the BPF links and maps to systemd failed ({}): a restart will re-attach", *error);
        return false;
    }
    spdlog::info("{} BPF links, maps and rings handed to systemd: they stay attached across a restart", fds.size());
    return true;
}

void StateKeeping::forget() {
    store_.remove();
    restored_from_.clear();
    image_tracked_until_ns_ = 0;
    restored_outstanding_ = 0;
}

std::uint64_t StateKeeping::gap_ns() const {
    if (restored_from_.empty()) return 0;
    return tracing_started_ns_ - std::min(tracing_started_ns_, image_tracked_until_ns_);
}

std::optional<std::uint64_t> StateKeeping::unread_ns() const {
    if (rings_read_since_ns_ == 0) return std::nullopt;
    return rings_read_since_ns_ - std::min(rings_read_since_ns_, rings_unread_from_ns_);
}

nlohmann::json StateKeeping::to_json(const core::Tracker& tracker) const {
    nlohmann::json gap = nullptr;
    if (!restored_from_.empty()) {
        // From the age index when kept (to within an epoch), else one scan.
        const std::vector<core::SiteAge> born = tracker.ages_indexed()
                                                    ? tracker.outstanding_born_by_epochs(image_tracked_until_ns_)
                                                    : tracker.outstanding_born_by(image_tracked_until_ns_);
        std::uint64_t before = 0;
        if (gap_ns() > 0)
            for (const core::SiteAge& s : born) before += s.count;
        gap = {{"from_ns", image_tracked_until_ns_},
               {"to_ns", tracing_started_ns_},
               {"ns", gap_ns()},
               {"outstanding_born_before", before}};
    }
    return {
        {"stored", store_.active()},
        {"programs", programs_},
        {"programs_kept", programs_kept_},
        {"restored_from", restored_from_.empty() ? nlohmann::json(nullptr) : nlohmann::json(restored_from_)},
        {"refused", refused_.empty() ? nlohmann::json(nullptr) : nlohmann::json(refused_)},
        {"restored_outstanding", restored_outstanding_},
        {"load_ms", load_ms_},
        {"gap", std::move(gap)},
        {"unread_ns", unread_ns() ? nlohmann::json(*unread_ns()) : nlohmann::json(nullptr)},
        {"tail_bytes", tail_bytes_},
        {"saves", saves_},
        {"save_failures", save_failures_},
        {"image_bytes", last_image_bytes_},
        {"save_ms", last_save_ms_},
    };
}

}  // namespace kleak
