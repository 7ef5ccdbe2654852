#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/pipeline_sink.h"
#include "core/report.h"
#include "core/sizes.h"
#include "kernel/host_info.h"
#include "kernel/kallsyms_file.h"

namespace kleak {

namespace {

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
    return out;
}

// The periodic live view: one summary line and the top-N sites.
void print_interval(std::FILE* out, const core::Pipeline& pipeline, std::uint64_t elapsed_ns,
                    std::uint64_t records_delta, double seconds, std::uint64_t dropped, std::size_t top,
                    core::Symbolizer& symbolizer) {
    const core::Totals& t = pipeline.tracker().totals();
    std::fprintf(out, "\n[%.1fs] %.0f records/s, %llu outstanding allocations (%llu bytes), %llu dropped, %llu late\n",
                 static_cast<double>(elapsed_ns) / 1e9, static_cast<double>(records_delta) / seconds,
                 static_cast<unsigned long long>(t.outstanding), static_cast<unsigned long long>(t.outstanding_bytes),
                 static_cast<unsigned long long>(dropped), static_cast<unsigned long long>(pipeline.late()));
    const auto rows = core::top_sites_by_outstanding(pipeline.tracker(), top, symbolizer);
    std::fputs(core::top_table_text(rows).c_str(), out);
    std::fflush(out);
}

// What tracing cost, from the kernel's per-program statistics: runs and run
// time (only counted while sysctl kernel.bpf_stats_enabled=1) and recursion
// misses (runs the kernel skipped because the program nested on its CPU:
// records lost before they were made, so they are no ring drop).
struct CostSummary {
    std::vector<ProgramStats> programs;
    std::uint64_t records = 0;
    double seconds = 0;
    std::uint32_t sample_shift = 0;
    bool emit_records = true;
};

bool stats_enabled(const CostSummary& cost) {
    for (const auto& p : cost.programs)
        if (p.run_cnt != 0) return true;
    return false;
}

std::string cost_text(const CostSummary& cost) {
    std::string out = "\ncost:\n";
    char line[256];
    std::snprintf(line, sizeof line, "  %llu records in %.1f s (%.0f records/s)%s\n",
                  static_cast<unsigned long long>(cost.records), cost.seconds,
                  cost.seconds > 0 ? static_cast<double>(cost.records) / cost.seconds : 0.0,
                  cost.emit_records ? "" : "; --no-emit: programs attached, no records written");
    out += line;
    if (cost.sample_shift != 0) {
        std::snprintf(line, sizeof line,
                      "  sampled: 1 in %llu pointers (--sample-shift %u); multiply counts and bytes by %llu\n",
                      1ULL << cost.sample_shift, cost.sample_shift, 1ULL << cost.sample_shift);
        out += line;
    }
    const bool timed = stats_enabled(cost);
    std::snprintf(line, sizeof line, "  %-24s %12s %10s %18s\n", "program", timed ? "runs" : "", timed ? "ns/run" : "",
                  "recursion misses");
    out += line;
    for (const auto& p : cost.programs) {
        if (timed && p.run_cnt != 0) {
            std::snprintf(line, sizeof line, "  %-24s %12llu %10.1f %18llu\n", p.name.c_str(),
                          static_cast<unsigned long long>(p.run_cnt),
                          static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_cnt),
                          static_cast<unsigned long long>(p.recursion_misses));
        } else {
            std::snprintf(line, sizeof line, "  %-24s %12s %10s %18llu\n", p.name.c_str(), "", "",
                          static_cast<unsigned long long>(p.recursion_misses));
        }
        out += line;
    }
    if (!timed) out += "  (run counts and ns/run need sysctl kernel.bpf_stats_enabled=1)\n";
    return out;
}

nlohmann::json cost_json(const CostSummary& cost) {
    nlohmann::json programs = nlohmann::json::array();
    for (const auto& p : cost.programs) {
        nlohmann::json j = {{"name", p.name}, {"recursion_misses", p.recursion_misses}};
        if (p.run_cnt != 0) {
            j["run_cnt"] = p.run_cnt;
            j["run_time_ns"] = p.run_time_ns;
            j["ns_per_run"] = static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_cnt);
        }
        programs.push_back(std::move(j));
    }
    return {{"records", cost.records},
            {"seconds", cost.seconds},
            {"sample_shift", cost.sample_shift},
            {"emit_records", cost.emit_records},
            {"bpf_stats_enabled", stats_enabled(cost)},
            {"programs", std::move(programs)}};
}

}  // namespace

int run_trace(const TraceCommand& command) {
    SignalFd signals{SIGINT, SIGTERM};
    core::Pipeline pipeline(possible_cpus());
    PipelineSink sink(pipeline);
    auto symbolizer = make_kallsyms_symbolizer(command.kallsyms);
    TracingSession session(command.tracer, sink);
    spdlog::info("tracing {} with a {} ring per CPU on {} CPUs; Ctrl-C prints the report",
                 join(session.tracer().attached()), core::format_size(command.tracer.buffer_size), session.cpu_count());

    // In --json mode stdout carries only the final report.
    std::FILE* live_out = command.json ? stderr : stdout;
    const std::uint64_t started = monotonic_now_ns();
    std::uint64_t last_tick = started;
    std::uint64_t last_records = 0;
    EventLoop loop;
    session.start(loop, command.timing, [&](std::uint64_t watermark) { pipeline.release_until(watermark); });
    run_until_stopped(loop, signals, std::chrono::seconds(0), command.interval, [&]() {
        const std::uint64_t now = monotonic_now_ns();
        const std::uint64_t records = pipeline.records();
        const double seconds = static_cast<double>(now - last_tick) / 1e9;
        std::uint64_t dropped = 0;
        for (const auto d : session.drops()) dropped += d;
        print_interval(live_out, pipeline, now - started, records - last_records, seconds, dropped, command.top,
                       *symbolizer);
        last_tick = now;
        last_records = records;
    });

    session.stop_and_drain();
    pipeline.finish();
    const CostSummary cost{session.tracer().program_stats(), pipeline.records(),
                           static_cast<double>(monotonic_now_ns() - started) / 1e9, command.tracer.sample_shift,
                           command.tracer.emit_records};
    const core::Losses losses = core::make_losses(session.drops(), pipeline.late(), pipeline.undecodable(),
                                                  command.tracer.buffer_size, session.consumer().peak_backlog_bytes());
    const core::Report report = core::build_report(pipeline.tracker(), losses, *symbolizer);
    if (command.json) {
        nlohmann::json out = core::report_to_json(report);
        out["cost"] = cost_json(cost);
        std::cout << out.dump(2) << '\n';
    } else {
        std::cout << '\n' << core::report_to_text(report, command.top) << cost_text(cost);
    }
    std::cout.flush();
    return 0;
}

}  // namespace kleak
