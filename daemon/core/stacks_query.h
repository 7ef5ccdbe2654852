// The `stacks` query: live memory per distinct kernel stack per call site,
// from the allocation classes that carry a stack (allocation_class.h: the
// origin is part of a class, so this is O(classes), never a table scan), and
// the folded format of FlameGraph's stackcollapse-* tools. Frames come from
// the BPF stack map through a seam (StackSource) and are named lazily.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "symbolizer.h"
#include "tracker.h"

namespace kleak::core {

// Reads one stack's frames (innermost first) by its id in the BPF stack
// map; empty when the map does not have it.
class StackSource {
public:
    virtual ~StackSource() = default;
    virtual std::vector<std::uint64_t> frames(std::uint32_t stack_id) = 0;
};

// Live allocations of one site with one stack (Origin::stack, 1 + the id).
struct StackTotal {
    SiteId site = 0;
    std::uint32_t stack = 0;
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
};

// Every (site, stack) with live allocations, most bytes first (ties: most
// allocations, then site and stack, so the order is stable). Allocations kept
// outside the class table (Tracker::class_overflows()) are not counted.
std::vector<StackTotal> live_stacks(const Tracker& tracker);

// Live allocations per process (Origin::process, the tracker's
// ProcessTable id; 0: unknown) of one site, or of every site (nullopt), most
// bytes first: only allocations that carry a stack have one.
struct ProcessTotal {
    std::uint32_t process = 0;
    std::uint32_t tgid = 0;  // 0 when process is 0
    std::uint64_t outstanding = 0;
    std::uint64_t outstanding_bytes = 0;
};
std::vector<ProcessTotal> live_processes(const Tracker& tracker, std::optional<SiteId> site);

// live_processes() of every site that has any, in one pass over the classes,
// keyed by the site as rows print it (format_site): what the rows of `leaks`,
// `suspects` and snapshots are annotated with (app/process_namer.h).
std::map<std::string, std::vector<ProcessTotal>> processes_by_site(const Tracker& tracker, Symbolizer& symbolizer);

// A captured stack starts inside the tracer and the allocator: the frames
// before the one at the allocation's call site are theirs, and dropped. A
// stack without that frame is kept whole.
std::span<const std::uint64_t> from_call_site(std::span<const std::uint64_t> frames, std::uint64_t call_site);

enum class StackWeight { bytes, count };

struct StacksQuery {
    std::string function;  // only sites in this function; "": every site
    std::size_t top = 20;  // 0: every stack
};

// {"stacks": [{"site", "function", "family", "frames": ["func+0xoff [module]",
// innermost first], "outstanding", "outstanding_bytes", "processes": [{"tgid",
// "process", "outstanding", "outstanding_bytes"}]}], "outstanding",
// "outstanding_bytes"}:
// the totals are over every stack the query matched, `top` or not.
nlohmann::json stacks_to_json(const Tracker& tracker, StackSource& source, Symbolizer& symbolizer,
                              const StacksQuery& query);

// The frame addresses the top stacks of `query` would name, so the caller
// can have them all named in one kallsyms read (symbolizer.h). The
// symbolizer names only call sites here (for query.function).
std::vector<std::uint64_t> stack_frame_addresses(const Tracker& tracker, StackSource& source, Symbolizer& symbolizer,
                                                 const StacksQuery& query);

// A `stacks` result as folded lines, "outer;...;inner WEIGHT\n", each frame
// its function ("func" or "func [module]": offsets would split one function's
// box into several), identical stacks merged, sorted by line.
std::string folded_stacks(const nlohmann::json& result, StackWeight weight);

// "" unless the result's "sample_shift" N is set: then "sampled: 1 in 2^N
// allocations get a stack, so these totals are about 1/2^N of the live
// ones", for every printed form of the stacks (folded lines carry no room).
std::string sampled_note(const nlohmann::json& result);

}  // namespace kleak::core
