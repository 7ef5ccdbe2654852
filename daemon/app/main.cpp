// kleakd: kernel memory-leak tracer. Parses the command line and runs a
// subcommand; start-up failures print one line and exit 1.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <string_view>
#include <vector>

#include "app/commands.h"
#include "app/logging.h"
#include "app/memory_policy.h"
#include "app/serve_command.h"
#include "core/sizes.h"
#include "kernel/startup_error.h"
#include "version.h"

namespace {

// CLI11 validator for --buffer-size that keeps parse_buffer_size's message.
struct BufferSizeOption {
    std::uint64_t bytes = kleak::core::kDefaultBufferSize;
    std::string text = "8M";

    void add_to(CLI::App& app) {
        app.add_option("--buffer-size,-b", text,
                       "Ring buffer size per CPU: a power of two from 16K to 1G (K, M, G suffixes)")
            ->default_str("8M")
            ->check(CLI::Validator(
                [](std::string& value) {
                    auto parsed = kleak::core::parse_buffer_size(value);
                    return parsed.bytes ? std::string() : parsed.error;
                },
                "SIZE"));
    }
    std::uint64_t resolve() const { return *kleak::core::parse_buffer_size(text).bytes; }
};

// "slab,page" -> {"slab", "page"}; empty names are left out.
std::vector<std::string_view> split_allocators(std::string_view list) {
    std::vector<std::string_view> names;
    while (!list.empty()) {
        const auto comma = list.find(',');
        const std::string_view name = list.substr(0, comma);
        if (!name.empty()) names.push_back(name);
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    }
    return names;
}

void add_allocator_flags(CLI::App& app, kleak::TracerOptions& tracer) {
    // `record` keeps the kernel log too (kleakd printk DIR shows it); the
    // live tracer only tracks allocations.
    app.add_flag("!--no-kmalloc", tracer.trace_kmalloc, "Do not trace kmalloc (kmalloc/kfree)");
    app.add_flag("!--no-kmem-cache", tracer.trace_kmem_cache,
                 "Do not trace slab caches (kmem_cache_alloc/kmem_cache_free)");
    app.add_option_function<std::string>(
           "--allocators",
           [&tracer](const std::string& list) {
               tracer.trace_kmalloc = tracer.trace_kmem_cache = tracer.trace_page = tracer.trace_percpu =
                   tracer.trace_vmalloc = false;
               for (const std::string_view name : split_allocators(list)) {
                   if (name == "all" || name == "slab" || name == "kmalloc") tracer.trace_kmalloc = true;
                   if (name == "all" || name == "slab" || name == "kmem_cache") tracer.trace_kmem_cache = true;
                   if (name == "all" || name == "page") tracer.trace_page = true;
                   if (name == "all" || name == "percpu") tracer.trace_percpu = true;
                   if (name == "all" || name == "vmalloc") tracer.trace_vmalloc = true;
               }
           },
           "Allocator families to trace, comma-separated: slab (= kmalloc,kmem_cache), page, percpu, vmalloc, or "
           "all. Pages are off by default: they run at page-cache rates (README, \"Allocator families\")")
        ->check(CLI::Validator(
            [](std::string& list) {
                const auto names = split_allocators(list);
                if (names.empty()) return std::string("no allocator family is listed");
                for (const std::string_view name : names) {
                    if (name != "all" && name != "slab" && name != "kmalloc" && name != "kmem_cache" &&
                        name != "page" && name != "percpu" && name != "vmalloc")
                        return "'" + std::string(name) +
                               "' is not an allocator family: slab, kmalloc, kmem_cache, page, percpu, vmalloc, all";
                }
                return std::string();
            },
            "LIST"))
        ->default_str("slab,percpu,vmalloc");
    app.add_flag("--track-movable-pages", tracer.track_movable_pages,
                 "With page: record movable pages too (process memory, page cache, tmpfs) instead of only "
                 "counting them");
}

void add_attach_option(CLI::App& app, kleak::TracerOptions& tracer) {
    app.add_option_function<std::string>(
           "--attach", [&tracer](const std::string& mode) { tracer.attach = *kleak::parse_attach_mode(mode); },
           "How the BPF programs attach: auto (tp_btf where this kernel's verifier accepts them, else raw_tp, as "
           "on Debian 12's 6.1 and 6.12), tp_btf, or raw_tp. The same code and cost either way")
        ->check(CLI::Validator(
            [](std::string& mode) {
                return kleak::parse_attach_mode(mode) ? std::string()
                                                      : "'" + mode + "' is not an attach mode: auto, tp_btf or raw_tp";
            },
            "MODE"))
        ->default_str("auto");
}

// Tuning for experts and tests; hidden from --help (empty group).
void add_timing_options(CLI::App& app, kleak::SessionTiming& timing) {
    app.add_option("--drain-ms", timing.drain_period, "How often the rings are drained")->group("");
    app.add_option("--holdback-ms", timing.holdback, "How long a record may take to commit")->group("");
}

void add_tracer_tuning(CLI::App& app, kleak::SessionTiming& timing, kleak::TracerOptions& tracer, int& nice) {
    add_timing_options(app, timing);
    app.add_option("--nice", nice,
                   "Run at this nice value, or lower if already lower: kleakd must get CPU when the traced load "
                   "saturates every CPU, or its rings overflow")
        ->check(CLI::Range(-20, 19))
        ->capture_default_str();
    app.add_option("--wakeup-backlog", tracer.wakeup_backlog_bytes,
                   "Ring bytes that force a consumer wake-up (default: a quarter of the ring)")
        ->group("");
}

}  // namespace

int main(int argc, char** argv) {
    kleak::setup_logging();

    CLI::App app{
        "kleakd - an always-on kernel memory-leak tracer.\n"
        "Traces kmalloc/kfree and kmem_cache_alloc/free through BPF tracepoints into per-CPU ring\n"
        "buffers, merges them in time order and reports allocations that were never freed, by call site."};
    app.set_version_flag("--version", std::string("kleakd ") + kKleakdVersion);
    std::string log_level = "info";
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
        ->default_str("info");
    app.require_subcommand(0, 1);
    kleak::ServeCommand serve;
    std::string check_config;
    app.add_option("--config,-c", serve.config_path, "Daemon configuration file")
        ->default_str(kleak::kDefaultConfigPath);
    app.add_option("--check-config", check_config, "Validate a configuration file, print every error, and exit");
    app.footer("Without a subcommand kleakd runs the daemon (`kleakd serve`).");

    auto* serve_cmd = app.add_subcommand(
        "serve",
        "Run the daemon: trace continuously, answer kleakctl on the query socket, write JSON snapshots "
        "(the default when no subcommand is given)");
    serve_cmd->footer(
        "Under systemd (kleakd.service) the daemon keeps its state across restarts, upgrades and crashes in "
        "systemd's file descriptor store: stored on SIGTERM and every snapshots.checkpoint_interval, restored at "
        "start. Started from a shell it stores and restores nothing. It runs at nice -10 (or lower if started "
        "lower), as the service does, so that a loaded host cannot starve it of the CPU it drains the rings with.");
    serve_cmd->add_option("--config,-c", serve.config_path, "Daemon configuration file")
        ->default_str(kleak::kDefaultConfigPath);
    add_timing_options(*serve_cmd, serve.timing);

    kleak::TraceCommand trace;
    BufferSizeOption trace_buffer;
    int trace_interval = 5;
    auto* trace_cmd = app.add_subcommand(
        "trace",
        "Trace live: print the top call sites by outstanding bytes every interval, and the full kleak "
        "report on Ctrl-C/SIGTERM");
    trace_cmd->add_option("--interval,-i", trace_interval, "Seconds between live tables")
        ->check(CLI::Range(1, 86400))
        ->default_str("5");
    trace_cmd->add_option("--top,-n", trace.top, "Call sites per table and report section")
        ->check(CLI::Range(1, 100000))
        ->default_str("10");
    trace_cmd->add_flag("--json", trace.json, "Print the final report as JSON on stdout (live tables go to stderr)");
    trace_buffer.add_to(*trace_cmd);
    add_allocator_flags(*trace_cmd, trace.tracer);
    add_attach_option(*trace_cmd, trace.tracer);
    add_tracer_tuning(*trace_cmd, trace.timing, trace.tracer, trace.nice);
    trace_cmd
        ->add_option("--sample-shift", trace.tracer.sample_shift,
                     "Trace 1 in 2^N allocations, chosen by a hash of the pointer, so every kept allocation's "
                     "free is kept too; counts and bytes in the output are that fraction of the real ones "
                     "(lower cost per allocation, fewer records)")
        ->check(CLI::Range(0u, kleak::kMaxSampleShift))
        ->default_str("0");
    trace_cmd
        ->add_option("--min-size", trace.tracer.min_size,
                     "Skip allocations of fewer than BYTES requested bytes. Their frees are still traced and "
                     "show as unmatched frees; prefer --sample-shift to cut cost")
        ->check(CLI::Range(0u, 0xffffffffu))
        ->default_str("0");
    trace_cmd
        ->add_option_function<std::string>(
            "--stacks", [&trace](const std::string& mode) { trace.tracer.stacks = *kleak::core::parse_stack_mode(mode); },
            "Kernel stacks: all (slab, percpu and vmalloc allocations, 1 in 2^--stack-sample-shift; the report ends with live bytes per "
            "stack, folded, and its JSON carries them as `kleakctl stacks --json` does), off, or suspects (the "
            "daemon's default; trace judges no site, so it captures nothing here, at the cost the daemon's "
            "default has on a host where no site grows: see `kleakctl stacks`)")
        ->check(CLI::IsMember({"suspects", "all", "off"}))
        ->default_str("suspects");
    trace_cmd
        ->add_option("--stack-sample-shift", trace.tracer.stack_sample_shift,
                     "With --stacks all: a stack for 1 in 2^N allocations, chosen by a hash of the pointer (0: every "
                     "one; a stack walk costs ~2.5 us per allocation); the stacks' totals count the sampled ones")
        ->check(CLI::Range(0u, kleak::kMaxSampleShift))
        ->default_str(std::to_string(kleak::core::kDefaultStackSampleShift));
    // Diagnostic: programs attached but writing nothing (the cost floor).
    trace_cmd->add_flag("!--no-emit", trace.tracer.emit_records, "Attach the programs but emit no records")->group("");

    kleak::RecordCommand record;
    BufferSizeOption record_buffer;
    int record_duration = 0;
    auto* record_cmd = app.add_subcommand(
        "record", "Record raw records to per-CPU files (kleak0..kleakN) and meta.json in DIR, for `kleakd report`");
    record_cmd->add_option("--output,-o", record.output, "Directory to write (created if missing)")->required();
    record_cmd->add_option("--duration,-d", record_duration, "Stop after this many seconds (default: on Ctrl-C)")
        ->check(CLI::Range(1, 365 * 86400));
    record_buffer.add_to(*record_cmd);
    add_allocator_flags(*record_cmd, record.tracer);
    add_attach_option(*record_cmd, record.tracer);
    record.tracer.trace_printk = true;
    record_cmd->add_flag("!--no-printk", record.tracer.trace_printk, "Do not record the kernel log (printk:console)");
    add_tracer_tuning(*record_cmd, record.timing, record.tracer, record.nice);

    kleak::ReportCommand report;
    auto* report_cmd = app.add_subcommand("report", "Replay a recording and print its kleak report");
    report_cmd->add_option("dir", report.dir, "Directory written by `kleakd record`")
        ->required()
        ->check(CLI::ExistingDirectory);
    report_cmd->add_flag("--json", report.json, "Print the report as JSON");
    report_cmd->add_option("--top,-n", report.top, "Rows per report section (default: all)");

    kleak::PrintkCommand printk;
    auto* printk_cmd =
        app.add_subcommand("printk", "Print the kernel log of a recording, merged across CPUs in time order");
    printk_cmd->add_option("dir", printk.dir, "Directory written by `kleakd record`")
        ->required()
        ->check(CLI::ExistingDirectory);
    printk_cmd->add_flag("--json", printk.json, "One JSON object per line");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? 0 : 2;  // usage errors: exit 2
    }
    spdlog::set_level(spdlog::level::from_str(log_level));

    try {
        if (!check_config.empty()) return kleak::run_check_config(check_config);
        if (*trace_cmd) {
            trace.tracer.buffer_size = trace_buffer.resolve();
            trace.interval = std::chrono::seconds(trace_interval);
            return kleak::run_trace(trace);
        }
        if (*record_cmd) {
            record.tracer.buffer_size = record_buffer.resolve();
            record.duration = std::chrono::seconds(record_duration);
            return kleak::run_record(record);
        }
        if (*report_cmd) return kleak::run_report(report);
        if (*printk_cmd) return kleak::run_printk(printk);
        kleak::return_freed_memory_promptly();  // the daemon: its RSS is what a host pays to run it
        return kleak::run_serve(serve);
    } catch (const kleak::StartupError& e) {
        spdlog::error("{}", e.what());
        return 1;
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
}
