// The kleakd query protocol codec: JSON lines over a Unix stream socket.
// Pure logic, no I/O: the daemon and kleakctl move bytes, this turns them into
// requests and responses and back. The wire format is specified, with its
// reasons, in proto/PROTOCOL.md; the golden lines in tests/fixtures/proto/
// are its executable form.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kleak::proto {

inline constexpr int kProtocolVersion = 1;
// Bytes of one request line, its newline included. Bounds what a client can
// make the daemon buffer.
inline constexpr std::size_t kMaxRequestBytes = 65536;
inline constexpr std::uint32_t kMaxLeaksTop = 100000;
// How deep arrays and objects may nest in a request line (a valid one nests
// 2): deeper lines are a bad_request, refused before they are parsed.
inline constexpr std::size_t kMaxRequestDepth = 16;

enum class Op { version, stats, leaks, report, snapshot, reset, printk, suspects, history, caches, stacks, capture };
std::string_view op_name(Op op);
std::optional<Op> op_from_name(std::string_view name);
// Whether `op` changes the daemon's state (`reset`, which wipes every
// history, and `capture`, which changes what every allocation costs): the daemon takes those only from root or its admin group
// (socket.admin_group), the rest from any peer it lets in (PROTOCOL.md,
// "Who may call what").
bool op_changes_state(Op op);

enum class LeakSort { bytes, count };
std::string_view leak_sort_name(LeakSort sort);

// Allocator families a `family` arg names ("" : every family).
bool is_family_name(std::string_view name);

struct LeaksArgs {
    std::uint32_t top = 20;
    std::uint64_t min_age_ns = 0;
    LeakSort sort = LeakSort::bytes;
    std::string family;  // "slab", "page", "percpu", "vmalloc"; "": all
    // "site" (the default), or "comm" / "cgroup": live allocations that carry
    // a process (those with a kernel stack) by their process's comm or cgroup.
    std::string by = "site";
    bool operator==(const LeaksArgs&) const = default;
};

inline constexpr std::uint32_t kMaxPrintkLimit = 1000000;
// "emerg" -> 0 .. "debug" -> 7, as dmesg --level names them.
std::optional<int> printk_level_from_name(std::string_view name);

// The kernel log. `after_seq` and `since_ns` select lines after a sequence
// number or from a CLOCK_MONOTONIC time; `level` keeps lines at that level or
// more severe (0 emerg .. 7 debug; lines with no level always pass); `limit`
// keeps the newest N (0: all kept). With `follow` the reply is a stream: the
// backlog, then one result per batch of new lines, until the client closes.
struct PrintkArgs {
    std::uint64_t after_seq = 0;
    std::uint64_t since_ns = 0;
    std::uint32_t limit = 0;
    int level = 7;
    bool follow = false;
    bool operator==(const PrintkArgs&) const = default;
};

// Sites ranked by how likely they leak (README "Verdicts").
struct SuspectsArgs {
    std::uint32_t top = 20;
    std::string family;  // as LeaksArgs::family
    bool operator==(const SuspectsArgs&) const = default;
};

// One site's series: `site` as reports print it ("func+0x1f"), a function
// name, or a hex address; `resolution` 0 (the sampling interval) .. 3 (the
// coarsest), as kleakctl's 10s/1m/10m/2h.
inline constexpr std::uint32_t kMaxHistoryResolution = 3;
struct HistoryArgs {
    std::string site;
    std::uint32_t resolution = 0;
    bool operator==(const HistoryArgs&) const = default;
};

// Slab caches: kleakd's live objects against /proc/slabinfo's, most live
// first; `top` 0: every cache.
struct CachesArgs {
    std::uint32_t top = 0;
    bool operator==(const CachesArgs&) const = default;
};

// Live memory per kernel stack (README, "Stacks"): `function` keeps the
// sites in that function ("": all); `top` 0: every stack.
struct StacksArgs {
    std::string function;
    std::uint32_t top = 20;
    bool operator==(const StacksArgs&) const = default;
};

// Which allocations get a stack from now on: `stacks` "suspects", "all" or
// "off"; `functions`: in suspects mode, the sites in these functions too
// (replacing the ones named before); `sample_shift`: in all mode, 1 in 2^N
// pointers (absent: the daemon's tracing.stack_sample_shift).
inline constexpr std::size_t kMaxCaptureFunctions = 64;
struct CaptureArgs {
    std::string stacks = "suspects";
    std::vector<std::string> functions;
    std::optional<std::uint32_t> sample_shift;
    bool operator==(const CaptureArgs&) const = default;
};

// `leaks` / `printk` / `suspects` / `history` / `caches` / `stacks` /
// `capture` are meaningful only for their op; the other ops take no args.
struct Request {
    std::uint64_t id = 0;
    Op op = Op::version;
    LeaksArgs leaks;
    PrintkArgs printk;
    SuspectsArgs suspects;
    HistoryArgs history;
    CachesArgs caches;
    StacksArgs stacks;
    CaptureArgs capture;
    bool operator==(const Request&) const = default;
};

enum class ErrorCode {
    parse_error,
    bad_request,
    unknown_op,
    unsupported_version,
    too_large,
    internal,
    not_permitted,
    lagged,     // a follower fell too far behind and was dropped
    not_found,  // the request names something the daemon does not have (a site)
    forbidden,  // the peer may query, but not send this op (it changes state)
};
std::string_view error_code_name(ErrorCode code);
std::optional<ErrorCode> error_code_from_name(std::string_view name);

struct Error {
    ErrorCode code;
    std::string message;
    bool operator==(const Error&) const = default;
};

// Exactly one of `request` and `error` is set. `id` is set whenever the
// request's id could be read, even if the request is otherwise invalid, so
// the error reply can echo it.
struct DecodedRequest {
    std::optional<std::uint64_t> id;
    std::optional<Request> request;
    std::optional<Error> error;
};

// `line` is one line without its '\n' (as LineReader::next gives it).
DecodedRequest decode_request(std::string_view line);

// Every encoder returns one complete line, ending with '\n'. They do not
// throw: strings that are not valid UTF-8 (a mangled symbol name) are
// replaced with U+FFFD rather than failing the reply.
std::string encode_request(const Request& request);
std::string encode_result(std::uint64_t id, const nlohmann::json& result);
std::string encode_error(std::optional<std::uint64_t> id, const Error& error);

// The error for a line LineReader reported too_large. Its id could not be
// read, so the reply carries a null id; the connection stays usable.
Error line_too_large_error(std::size_t max_line = kMaxRequestBytes);

// A reply as the client sees it: `result` when ok, `error` otherwise. `id` is
// unset when the server could not read the request's id.
struct Response {
    std::optional<std::uint64_t> id;
    bool ok = false;
    nlohmann::json result;
    std::optional<Error> error;
};

// For the client. A line that is not a well-formed version-1 response gives
// nullopt and says why in `why_not`.
std::optional<Response> decode_response(std::string_view line, std::string& why_not);

// Incremental framing for a non-blocking socket: feed whatever read()
// returned, then call next() until it says need_more. Drained that way, the
// reader never holds more than max_line bytes plus one feed.
class LineReader {
public:
    explicit LineReader(std::size_t max_line = kMaxRequestBytes);

    void feed(std::string_view bytes);

    enum class Status { line, need_more, too_large };
    // line: `line` holds the next complete line without '\n' (and without a
    // trailing '\r'); empty lines are skipped. too_large: a line reached
    // max_line bytes (newline included) without ending; it is reported once,
    // as soon as that is known, and its bytes are then discarded up to and
    // including its newline, so the lines after it are read normally.
    Status next(std::string& line);

    // Bytes held and not yet returned or discarded.
    std::size_t buffered() const;

private:
    void compact();

    std::size_t max_line_;
    std::string buffer_;
    std::size_t start_ = 0;    // first byte of buffer_ not yet consumed
    std::size_t scanned_ = 0;  // bytes from start_ on already searched for a newline
    bool discarding_ = false;  // inside an oversized line, dropping to its newline
};

// The `min_age` forms: a number of seconds >= 0 (integer or fractional), or
// a string "<digits><unit>" with unit ns, us, ms, s, m, h or d. nullopt with
// `why_not` for anything else, including values past 2^64 ns.
std::optional<std::uint64_t> parse_duration_ns(const nlohmann::json& value, std::string& why_not);

// The inverse for strings: the largest unit that represents `ns` exactly
// ("30s", "500ms", "0s"), so that parse_duration_ns(format_duration(x)) == x.
std::string format_duration(std::uint64_t ns);

}  // namespace kleak::proto
