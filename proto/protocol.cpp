// The kleakd query protocol codec; the wire format and its reasons are in
// proto/PROTOCOL.md. Decoding never throws: every way a line can be wrong
// becomes an Error (server side) or a `why_not` (client side).
#include "proto/protocol.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

namespace kleak::proto {
namespace {

using nlohmann::json;
// Envelopes keep the documented key order (v, id, op/ok, ...) so a line
// read in socat looks like the examples in PROTOCOL.md.
using ordered_json = nlohmann::ordered_json;

// --- names ---------------------------------------------------------------------------
// One table per enum; the *_name and *_from_name functions and the unknown-op
// message all read these, so adding a value touches one line.

template <typename Enum>
struct Named {
    Enum value;
    std::string_view name;
};

constexpr std::array kOps{
    Named<Op>{Op::version, "version"}, Named<Op>{Op::stats, "stats"},       Named<Op>{Op::leaks, "leaks"},
    Named<Op>{Op::report, "report"},   Named<Op>{Op::snapshot, "snapshot"}, Named<Op>{Op::reset, "reset"},
    Named<Op>{Op::printk, "printk"},   Named<Op>{Op::suspects, "suspects"}, Named<Op>{Op::history, "history"},
    Named<Op>{Op::caches, "caches"},   Named<Op>{Op::stacks, "stacks"},     Named<Op>{Op::capture, "capture"},
};

// syslog level names, as dmesg --level takes them.
constexpr std::array<std::string_view, 8> kLevelNames{"emerg", "alert",  "crit", "err",
                                                      "warn",  "notice", "info", "debug"};

constexpr std::array kLeakSorts{
    Named<LeakSort>{LeakSort::bytes, "bytes"},
    Named<LeakSort>{LeakSort::count, "count"},
};

constexpr std::array kErrorCodes{
    Named<ErrorCode>{ErrorCode::parse_error, "parse_error"},
    Named<ErrorCode>{ErrorCode::bad_request, "bad_request"},
    Named<ErrorCode>{ErrorCode::unknown_op, "unknown_op"},
    Named<ErrorCode>{ErrorCode::unsupported_version, "unsupported_version"},
    Named<ErrorCode>{ErrorCode::too_large, "too_large"},
    Named<ErrorCode>{ErrorCode::internal, "internal"},
    Named<ErrorCode>{ErrorCode::not_permitted, "not_permitted"},
    Named<ErrorCode>{ErrorCode::lagged, "lagged"},
    Named<ErrorCode>{ErrorCode::not_found, "not_found"},
    Named<ErrorCode>{ErrorCode::forbidden, "forbidden"},
};

template <typename Enum, std::size_t N>
std::string_view name_of(const std::array<Named<Enum>, N>& table, Enum value) {
    const auto it = std::find_if(table.begin(), table.end(), [&](const auto& entry) { return entry.value == value; });
    return it == table.end() ? std::string_view("?") : it->name;
}

template <typename Enum, std::size_t N>
std::optional<Enum> value_of(const std::array<Named<Enum>, N>& table, std::string_view name) {
    const auto it = std::find_if(table.begin(), table.end(), [&](const auto& entry) { return entry.name == name; });
    if (it == table.end()) return std::nullopt;
    return it->value;
}

// "version, stats, ..." for messages that tell the client what would work.
template <typename Enum, std::size_t N>
std::string list_names(const std::array<Named<Enum>, N>& table) {
    std::string names;
    for (const auto& entry : table) {
        if (!names.empty()) names += ", ";
        names += entry.name;
    }
    return names;
}

// --- messages ------------------------------------------------------------------------

// Messages quote what the client sent; a bound keeps a 64 KiB value from
// being echoed back whole.
constexpr std::size_t kMaxQuotedChars = 40;

std::string dump_line_safe(const auto& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

// Containers are quoted this many levels down, then as "[...]" / "{...}".
constexpr int kMaxQuotedDepth = 4;

// json::dump's text, but only the start of it: stops descending past
// kMaxQuotedDepth and stops adding members once past kMaxQuotedChars, so
// quoting costs a bounded stack and time whatever the value (a whole dump of
// a 64 KiB line of nested arrays needed megabytes of stack).
void quote_into(std::string& out, const json& value, int depth) {
    if (!value.is_structured()) {
        out += dump_line_safe(value);
        return;
    }
    const bool array = value.is_array();
    if (depth == kMaxQuotedDepth && !value.empty()) {
        out += array ? "[...]" : "{...}";
        return;
    }
    out += array ? '[' : '{';
    for (auto it = value.begin(); it != value.end() && out.size() <= kMaxQuotedChars; ++it) {
        if (it != value.begin()) out += ',';
        if (!array) out += dump_line_safe(json(it.key())) + ':';
        quote_into(out, *it, depth + 1);
    }
    out += array ? ']' : '}';
}

std::string quoted(const json& value) {
    std::string text;
    quote_into(text, value, 0);
    if (text.size() > kMaxQuotedChars) text = text.substr(0, kMaxQuotedChars) + "...";
    return text;
}

// How deep arrays and objects nest in `line`, counted without parsing it
// (brackets inside strings do not count). Stops counting at `limit` + 1.
std::size_t nesting_depth(std::string_view line, std::size_t limit) {
    std::size_t depth = 0;
    std::size_t deepest = 0;
    bool in_string = false;
    bool escaped = false;
    for (const char c : line) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
            if (deepest > limit) break;
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return deepest;
}

// `"args.top" must be an integer in 1..100000, got "5"`: the key path first,
// so the client can find the field in what it sent.
std::string field_error(std::string_view path, std::string_view expectation, const json& got) {
    return "\"" + std::string(path) + "\" " + std::string(expectation) + ", got " + quoted(got);
}

// --- durations -----------------------------------------------------------------------

constexpr std::uint64_t kNsPerSecond = 1'000'000'000;
constexpr std::uint64_t kMaxU64 = std::numeric_limits<std::uint64_t>::max();
constexpr double kTwoTo64 = 18446744073709551616.0;

// Largest first, so format_duration picks the coarsest exact unit.
constexpr std::array<std::pair<std::string_view, std::uint64_t>, 7> kDurationUnits{{
    {"d", 86400 * kNsPerSecond},
    {"h", 3600 * kNsPerSecond},
    {"m", 60 * kNsPerSecond},
    {"s", kNsPerSecond},
    {"ms", 1'000'000},
    {"us", 1'000},
    {"ns", 1},
}};

constexpr std::string_view kDurationForms =
    "a number of seconds >= 0 or a string like \"500ms\", \"30s\", \"5m\", \"1h\", \"1d\"";

std::string not_a_duration(const json& value) {
    return "expected " + std::string(kDurationForms) + ", got " + quoted(value);
}

std::optional<std::uint64_t> too_long(const json& value, std::string& why_not) {
    why_not = quoted(value) + " is too long a duration (2^64 ns or more)";
    return std::nullopt;
}

std::optional<std::uint64_t> scale(std::uint64_t count, std::uint64_t unit_ns, const json& value,
                                   std::string& why_not) {
    if (count > kMaxU64 / unit_ns) return too_long(value, why_not);
    return count * unit_ns;
}

std::optional<std::uint64_t> parse_seconds(double seconds, const json& value, std::string& why_not) {
    if (!std::isfinite(seconds) || seconds < 0) {
        why_not = not_a_duration(value);
        return std::nullopt;
    }
    const double ns = std::round(seconds * static_cast<double>(kNsPerSecond));
    if (ns >= kTwoTo64) return too_long(value, why_not);
    return static_cast<std::uint64_t>(ns);
}

// "<digits><unit>": no sign, no fraction, no spaces, so every accepted string
// is exact and there is one way to write each value per unit.
std::optional<std::uint64_t> parse_duration_string(std::string_view text, const json& value, std::string& why_not) {
    const std::size_t digits =
        std::find_if(text.begin(), text.end(), [](char c) { return c < '0' || c > '9'; }) - text.begin();
    const std::string_view unit = text.substr(digits);
    const auto known =
        std::find_if(kDurationUnits.begin(), kDurationUnits.end(), [&](const auto& u) { return u.first == unit; });
    if (digits == 0 || known == kDurationUnits.end()) {
        why_not = not_a_duration(value);
        return std::nullopt;
    }
    std::uint64_t count = 0;
    for (const char c : text.substr(0, digits)) {
        const auto digit = static_cast<std::uint64_t>(c - '0');
        if (count > (kMaxU64 - digit) / 10) return too_long(value, why_not);
        count = count * 10 + digit;
    }
    return scale(count, known->second, value, why_not);
}

// --- requests ------------------------------------------------------------------------

bool is_family_name(std::string_view name) {
    return name == "slab" || name == "page" || name == "percpu" || name == "vmalloc";
}

constexpr std::array<std::string_view, 4> kRequestFields{"v", "id", "op", "args"};

std::optional<std::string> decode_family(const json& value, std::string& family) {
    if (!value.is_string() || !is_family_name(value.get<std::string>()))
        return field_error("args.family", "must be one of \"slab\", \"page\", \"percpu\", \"vmalloc\"", value);
    family = value.get<std::string>();
    return std::nullopt;
}

// Fills `args` from the request's "args" object; an error message or nullopt.
std::optional<std::string> decode_leaks_args(const json& given, LeaksArgs& args) {
    for (const auto& [key, value] : given.items()) {
        if (key == "top") {
            // Parsed JSON holds every non-negative integer as unsigned.
            if (!value.is_number_unsigned() || value.get<std::uint64_t>() < 1 ||
                value.get<std::uint64_t>() > kMaxLeaksTop) {
                return field_error("args.top", "must be an integer in 1.." + std::to_string(kMaxLeaksTop), value);
            }
            args.top = static_cast<std::uint32_t>(value.get<std::uint64_t>());
        } else if (key == "min_age") {
            std::string why_not;
            const auto ns = parse_duration_ns(value, why_not);
            if (!ns) return "\"args.min_age\": " + why_not;
            args.min_age_ns = *ns;
        } else if (key == "sort") {
            const auto sort = value.is_string() ? value_of(kLeakSorts, value.get<std::string>()) : std::nullopt;
            if (!sort) return field_error("args.sort", "must be one of " + list_names(kLeakSorts), value);
            args.sort = *sort;
        } else if (key == "family") {
            if (auto message = decode_family(value, args.family)) return message;
        } else if (key == "by") {
            if (!value.is_string() || (value != "site" && value != "comm" && value != "cgroup"))
                return field_error("args.by", "must be \"site\", \"comm\" or \"cgroup\"", value);
            args.by = value.get<std::string>();
        } else {
            return "unknown arg \"args." + key + "\"; op \"leaks\" takes top, min_age, sort, family, by";
        }
    }
    return std::nullopt;
}

std::optional<std::string> decode_suspects_args(const json& given, SuspectsArgs& args) {
    for (const auto& [key, value] : given.items()) {
        if (key == "family") {
            if (auto message = decode_family(value, args.family)) return message;
            continue;
        }
        if (key != "top") return "unknown arg \"args." + key + "\"; op \"suspects\" takes top, family";
        if (!value.is_number_unsigned() || value.get<std::uint64_t>() < 1 || value.get<std::uint64_t>() > kMaxLeaksTop)
            return field_error("args.top", "must be an integer in 1.." + std::to_string(kMaxLeaksTop), value);
        args.top = static_cast<std::uint32_t>(value.get<std::uint64_t>());
    }
    return std::nullopt;
}

std::optional<std::string> decode_caches_args(const json& given, CachesArgs& args) {
    for (const auto& [key, value] : given.items()) {
        if (key != "top") return "unknown arg \"args." + key + "\"; op \"caches\" takes top";
        if (!value.is_number_unsigned() || value.get<std::uint64_t>() > kMaxLeaksTop)
            return field_error("args.top", "must be an integer in 0.." + std::to_string(kMaxLeaksTop) + " (0: all)",
                               value);
        args.top = static_cast<std::uint32_t>(value.get<std::uint64_t>());
    }
    return std::nullopt;
}

std::optional<std::string> decode_stacks_args(const json& given, StacksArgs& args) {
    for (const auto& [key, value] : given.items()) {
        if (key == "function") {
            if (!value.is_string()) return field_error("args.function", "must be a string (\"\": every site)", value);
            args.function = value.get<std::string>();
        } else if (key == "top") {
            if (!value.is_number_unsigned() || value.get<std::uint64_t>() > kMaxLeaksTop)
                return field_error("args.top", "must be an integer in 0.." + std::to_string(kMaxLeaksTop) + " (0: all)",
                                   value);
            args.top = static_cast<std::uint32_t>(value.get<std::uint64_t>());
        } else {
            return "unknown arg \"args." + key + "\"; op \"stacks\" takes function, top";
        }
    }
    return std::nullopt;
}

std::optional<std::string> decode_capture_args(const json& given, CaptureArgs& args) {
    for (const auto& [key, value] : given.items()) {
        if (key == "stacks") {
            if (!value.is_string() || (value != "suspects" && value != "all" && value != "off"))
                return field_error("args.stacks", "must be \"suspects\", \"all\" or \"off\"", value);
            args.stacks = value.get<std::string>();
        } else if (key == "functions") {
            if (!value.is_array() || value.size() > kMaxCaptureFunctions)
                return field_error("args.functions",
                                   "must be an array of at most " + std::to_string(kMaxCaptureFunctions) +
                                       " function names",
                                   value);
            args.functions.clear();
            for (const auto& name : value) {
                if (!name.is_string() || name.get_ref<const std::string&>().empty())
                    return field_error("args.functions", "must hold non-empty strings (function names)", name);
                args.functions.push_back(name.get<std::string>());
            }
        } else if (key == "sample_shift") {
            if (!value.is_number_unsigned() || value.get<std::uint64_t>() > 32)
                return field_error("args.sample_shift", "must be an integer in 0..32", value);
            args.sample_shift = static_cast<std::uint32_t>(value.get<std::uint64_t>());
        } else {
            return "unknown arg \"args." + key + "\"; op \"capture\" takes stacks, functions, sample_shift";
        }
    }
    return std::nullopt;
}

std::optional<std::string> decode_history_args(const json& given, HistoryArgs& args) {
    for (const auto& [key, value] : given.items()) {
        if (key == "site") {
            if (!value.is_string() || value.get_ref<const std::string&>().empty())
                return field_error("args.site", "must be a non-empty string (\"func+0x1f\", a function, or 0x...)",
                                   value);
            args.site = value.get<std::string>();
        } else if (key == "resolution") {
            if (!value.is_number_unsigned() || value.get<std::uint64_t>() > kMaxHistoryResolution)
                return field_error("args.resolution", "must be an integer in 0.." + std::to_string(kMaxHistoryResolution),
                                   value);
            args.resolution = static_cast<std::uint32_t>(value.get<std::uint64_t>());
        } else {
            return "unknown arg \"args." + key + "\"; op \"history\" takes site, resolution";
        }
    }
    if (args.site.empty()) return "op \"history\" needs \"args.site\"";
    return std::nullopt;
}

}  // namespace

std::optional<int> printk_level_from_name(std::string_view name) {
    const auto it = std::find(kLevelNames.begin(), kLevelNames.end(), name);
    if (it == kLevelNames.end()) return std::nullopt;
    return static_cast<int>(it - kLevelNames.begin());
}

namespace {

std::optional<std::string> decode_printk_args(const json& given, PrintkArgs& args) {
    const auto unsigned_field = [](const json& value) { return value.is_number_unsigned(); };
    for (const auto& [key, value] : given.items()) {
        if (key == "after_seq") {
            if (!unsigned_field(value)) return field_error("args.after_seq", "must be an integer >= 0", value);
            args.after_seq = value.get<std::uint64_t>();
        } else if (key == "since_ns") {
            if (!unsigned_field(value)) return field_error("args.since_ns", "must be an integer >= 0", value);
            args.since_ns = value.get<std::uint64_t>();
        } else if (key == "limit") {
            if (!unsigned_field(value) || value.get<std::uint64_t>() > kMaxPrintkLimit)
                return field_error("args.limit", "must be an integer in 0.." + std::to_string(kMaxPrintkLimit), value);
            args.limit = static_cast<std::uint32_t>(value.get<std::uint64_t>());
        } else if (key == "level") {
            std::optional<int> level;
            if (value.is_number_unsigned() && value.get<std::uint64_t>() <= 7) level = value.get<int>();
            if (value.is_string()) level = printk_level_from_name(value.get<std::string>());
            if (!level) return field_error("args.level", "must be 0..7 or a level name (emerg .. debug)", value);
            args.level = *level;
        } else if (key == "follow") {
            if (!value.is_boolean()) return field_error("args.follow", "must be true or false", value);
            args.follow = value.get<bool>();
        } else {
            return "unknown arg \"args." + key + "\"; op \"printk\" takes after_seq, since_ns, limit, level, follow";
        }
    }
    return std::nullopt;
}

// Both directions want to say where the JSON broke, which only nlohmann's
// exception tells; it is caught here and becomes `why_not`. Only the byte
// offset is kept: nlohmann's wording changes between releases, and the
// message is part of the golden replies.
std::optional<json> parse_json(std::string_view line, std::string& why_not) {
    try {
        return json::parse(line);
    } catch (const json::parse_error& e) {
        why_not = "not JSON: the parser stopped at byte " + std::to_string(e.byte) + " of the line";
        return std::nullopt;
    } catch (const json::out_of_range&) {
        // A number past a double's range (1e999): valid JSON that nlohmann
        // refuses with another exception, which escaped and ended the daemon
        // (found by tests/fuzz/fuzz_protocol).
        why_not = "not JSON kleakd can read: a number is out of range (beyond 1.8e308)";
        return std::nullopt;
    }
}

std::string to_line(const ordered_json& message) { return dump_line_safe(message) + '\n'; }

}  // namespace

std::string_view op_name(Op op) { return name_of(kOps, op); }
std::optional<Op> op_from_name(std::string_view name) { return value_of(kOps, name); }

bool op_changes_state(Op op) {
    switch (op) {
        case Op::reset:
        case Op::capture:
            return true;
        case Op::version:
        case Op::stats:
        case Op::leaks:
        case Op::report:
        case Op::snapshot:
        case Op::printk:
        case Op::suspects:
        case Op::history:
        case Op::caches:
        case Op::stacks:
            return false;
    }
    return true;  // an op added without a decision here: admin only until someone decides
}
std::string_view leak_sort_name(LeakSort sort) { return name_of(kLeakSorts, sort); }
std::string_view error_code_name(ErrorCode code) { return name_of(kErrorCodes, code); }
std::optional<ErrorCode> error_code_from_name(std::string_view name) { return value_of(kErrorCodes, name); }

std::optional<std::uint64_t> parse_duration_ns(const json& value, std::string& why_not) {
    if (value.is_number_unsigned()) return scale(value.get<std::uint64_t>(), kNsPerSecond, value, why_not);
    if (value.is_number_integer()) {  // signed: only negative numbers parse this way
        const auto seconds = value.get<std::int64_t>();
        if (seconds < 0) {
            why_not = not_a_duration(value);
            return std::nullopt;
        }
        return scale(static_cast<std::uint64_t>(seconds), kNsPerSecond, value, why_not);
    }
    if (value.is_number_float()) return parse_seconds(value.get<double>(), value, why_not);
    if (value.is_string()) return parse_duration_string(value.get_ref<const std::string&>(), value, why_not);
    why_not = not_a_duration(value);
    return std::nullopt;
}

std::string format_duration(std::uint64_t ns) {
    if (ns == 0) return "0s";
    const auto unit =
        std::find_if(kDurationUnits.begin(), kDurationUnits.end(), [&](const auto& u) { return ns % u.second == 0; });
    return std::to_string(ns / unit->second) + std::string(unit->first);  // "ns" divides everything
}

DecodedRequest decode_request(std::string_view line) {
    DecodedRequest out;
    const auto fail = [&out](ErrorCode code, std::string message) {
        out.error = Error{code, std::move(message)};
        return out;
    };

    // A request nests two levels (the envelope, its args); anything much
    // deeper is refused before it is parsed, so no later step (a message
    // quoting a value, the value's destruction) walks a deep tree.
    if (nesting_depth(line, kMaxRequestDepth) > kMaxRequestDepth) {
        return fail(ErrorCode::bad_request, "arrays and objects nest more than " + std::to_string(kMaxRequestDepth) +
                                                " levels deep; a request needs 2");
    }
    std::string why_not;
    const std::optional<json> parsed = parse_json(line, why_not);
    if (!parsed) return fail(ErrorCode::parse_error, std::move(why_not));
    const json& doc = *parsed;
    if (!doc.is_object())
        return fail(ErrorCode::bad_request, std::string("a request must be a JSON object, got ") + doc.type_name());

    // Read the id before anything can fail, so every later error echoes it.
    const auto id = doc.find("id");
    if (id != doc.end() && id->is_number_unsigned()) out.id = id->get<std::uint64_t>();

    // The version comes before the other checks: a request from another
    // version may be invalid in ways that only its version explains.
    const auto version = doc.find("v");
    const std::string speaks = "this kleakd speaks protocol version " + std::to_string(kProtocolVersion);
    if (version == doc.end()) return fail(ErrorCode::unsupported_version, "missing \"v\"; " + speaks);
    if (!version->is_number_integer())
        return fail(ErrorCode::bad_request, field_error("v", "must be an integer (the protocol version)", *version));
    if (!version->is_number_unsigned() || version->get<std::uint64_t>() != kProtocolVersion) {
        return fail(ErrorCode::unsupported_version,
                    "protocol version " + quoted(*version) + " is not supported; " + speaks);
    }

    if (id == doc.end()) return fail(ErrorCode::bad_request, "missing \"id\"");
    if (!out.id) return fail(ErrorCode::bad_request, field_error("id", "must be an unsigned 64-bit integer", *id));

    for (const auto& [key, value] : doc.items()) {
        if (std::find(kRequestFields.begin(), kRequestFields.end(), key) == kRequestFields.end()) {
            return fail(ErrorCode::bad_request, "unknown field \"" + key + "\"; a request has v, id, op, args");
        }
    }

    const auto op_field = doc.find("op");
    if (op_field == doc.end()) return fail(ErrorCode::bad_request, "missing \"op\"");
    if (!op_field->is_string()) return fail(ErrorCode::bad_request, field_error("op", "must be a string", *op_field));
    const auto op = op_from_name(op_field->get_ref<const std::string&>());
    if (!op) return fail(ErrorCode::unknown_op, "unknown op " + quoted(*op_field) + "; known ops: " + list_names(kOps));

    Request request;
    request.id = *out.id;
    request.op = *op;
    const auto args = doc.find("args");
    if (*op == Op::history && args == doc.end()) return fail(ErrorCode::bad_request, "op \"history\" needs \"args.site\"");
    if (args != doc.end()) {
        if (!args->is_object()) return fail(ErrorCode::bad_request, field_error("args", "must be an object", *args));
        if (*op == Op::leaks) {
            if (auto message = decode_leaks_args(*args, request.leaks))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (*op == Op::printk) {
            if (auto message = decode_printk_args(*args, request.printk))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (*op == Op::suspects) {
            if (auto message = decode_suspects_args(*args, request.suspects))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (*op == Op::history) {
            if (auto message = decode_history_args(*args, request.history))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (*op == Op::caches) {
            if (auto message = decode_caches_args(*args, request.caches))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (*op == Op::stacks) {
            if (auto message = decode_stacks_args(*args, request.stacks))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (*op == Op::capture) {
            if (auto message = decode_capture_args(*args, request.capture))
                return fail(ErrorCode::bad_request, std::move(*message));
        } else if (!args->empty()) {
            return fail(ErrorCode::bad_request, "op \"" + std::string(op_name(*op)) + "\" takes no args, got \"args." +
                                                    args->begin().key() + "\"");
        }
    }
    out.request = request;
    return out;
}

// --- encoding ------------------------------------------------------------------------

std::string encode_request(const Request& request) {
    ordered_json message{{"v", kProtocolVersion}, {"id", request.id}, {"op", op_name(request.op)}};
    if (request.op == Op::leaks) {
        // Every arg spelled out, so the request means the same to a daemon
        // whose defaults differ.
        message["args"] = ordered_json{
            {"top", request.leaks.top},
            {"min_age", format_duration(request.leaks.min_age_ns)},
            {"sort", leak_sort_name(request.leaks.sort)},
        };
        if (!request.leaks.family.empty()) message["args"]["family"] = request.leaks.family;
        // Only when not the default: a daemon that predates it refuses the
        // arg rather than answering by site.
        if (request.leaks.by != "site") message["args"]["by"] = request.leaks.by;
    }
    if (request.op == Op::suspects) {
        message["args"] = ordered_json{{"top", request.suspects.top}};
        if (!request.suspects.family.empty()) message["args"]["family"] = request.suspects.family;
    }
    if (request.op == Op::caches) message["args"] = ordered_json{{"top", request.caches.top}};
    if (request.op == Op::stacks)
        message["args"] = ordered_json{{"function", request.stacks.function}, {"top", request.stacks.top}};
    if (request.op == Op::capture) {
        message["args"] = ordered_json{{"stacks", request.capture.stacks}, {"functions", request.capture.functions}};
        if (request.capture.sample_shift) message["args"]["sample_shift"] = *request.capture.sample_shift;
    }
    if (request.op == Op::history)
        message["args"] = ordered_json{{"site", request.history.site}, {"resolution", request.history.resolution}};
    if (request.op == Op::printk) {
        message["args"] = ordered_json{
            {"after_seq", request.printk.after_seq}, {"since_ns", request.printk.since_ns},
            {"limit", request.printk.limit},         {"level", request.printk.level},
            {"follow", request.printk.follow},
        };
    }
    return to_line(message);
}

std::string encode_result(std::uint64_t id, const json& result) {
    return to_line(ordered_json{{"v", kProtocolVersion}, {"id", id}, {"ok", true}, {"result", ordered_json(result)}});
}

std::string encode_error(std::optional<std::uint64_t> id, const Error& error) {
    return to_line(ordered_json{
        {"v", kProtocolVersion},
        {"id", id ? ordered_json(*id) : ordered_json(nullptr)},
        {"ok", false},
        {"error", {{"code", error_code_name(error.code)}, {"message", error.message}}},
    });
}

Error line_too_large_error(std::size_t max_line) {
    return Error{ErrorCode::too_large, "a request line may be at most " + std::to_string(max_line) +
                                           " bytes, newline included; this one was discarded"};
}

// --- responses (client side) ---------------------------------------------------------

std::optional<Response> decode_response(std::string_view line, std::string& why_not) {
    const auto malformed = [&why_not](std::string reason) -> std::optional<Response> {
        why_not = std::move(reason);
        return std::nullopt;
    };

    std::optional<json> parsed = parse_json(line, why_not);
    if (!parsed) return std::nullopt;
    json& doc = *parsed;
    if (!doc.is_object()) return malformed("the reply is not a JSON object");

    const auto version = doc.find("v");
    if (version == doc.end() || !version->is_number_unsigned() || version->get<std::uint64_t>() != kProtocolVersion) {
        return malformed("the reply is not protocol version " + std::to_string(kProtocolVersion));
    }

    Response response;
    const auto id = doc.find("id");
    if (id == doc.end()) return malformed("the reply has no \"id\"");
    if (id->is_number_unsigned()) {
        response.id = id->get<std::uint64_t>();
    } else if (!id->is_null()) {
        return malformed("the reply's \"id\" is neither an unsigned integer nor null");
    }

    const auto ok = doc.find("ok");
    if (ok == doc.end() || !ok->is_boolean()) return malformed("the reply has no boolean \"ok\"");
    response.ok = ok->get<bool>();

    if (response.ok) {
        const auto result = doc.find("result");
        if (result == doc.end()) return malformed("the reply is ok but has no \"result\"");
        response.result = std::move(*result);
        return response;
    }

    const auto error = doc.find("error");
    if (error == doc.end() || !error->is_object()) return malformed("the reply failed but has no \"error\" object");
    const auto code = error->find("code");
    const auto message = error->find("message");
    if (code == error->end() || !code->is_string()) return malformed("the reply's \"error.code\" is not a string");
    if (message == error->end() || !message->is_string())
        return malformed("the reply's \"error.message\" is not a string");
    const auto known = error_code_from_name(code->get_ref<const std::string&>());
    if (!known) return malformed("the reply's error code " + quoted(*code) + " is not one this client knows");
    response.error = Error{*known, message->get<std::string>()};
    return response;
}

// --- framing -------------------------------------------------------------------------

LineReader::LineReader(std::size_t max_line) : max_line_(max_line) {}

void LineReader::feed(std::string_view bytes) { buffer_.append(bytes); }

std::size_t LineReader::buffered() const { return buffer_.size() - start_; }

void LineReader::compact() {
    buffer_.erase(0, start_);
    start_ = 0;
}

LineReader::Status LineReader::next(std::string& line) {
    while (true) {
        if (discarding_) {
            const std::size_t newline = buffer_.find('\n', start_);
            if (newline == std::string::npos) {
                buffer_.clear();
                start_ = 0;
                scanned_ = 0;
                return Status::need_more;
            }
            start_ = newline + 1;
            scanned_ = 0;
            discarding_ = false;
        }

        // Look for the newline only where an acceptable line could end, and
        // only in bytes not already searched: a reply fed in many pieces is
        // scanned once (was quadratic: a 100 MiB reply took 3.9 s).
        const std::size_t window = std::min(buffered(), max_line_);
        std::size_t newline = std::string_view(buffer_).substr(start_ + scanned_, window - std::min(window, scanned_)).find('\n');
        if (newline != std::string_view::npos) newline += scanned_;
        scanned_ = window;
        if (newline == std::string_view::npos) {
            if (buffered() >= max_line_) {
                // Known to be too long already: say so now rather than after
                // the client has sent the rest of it. The next call drops it.
                discarding_ = true;
                return Status::too_large;
            }
            compact();
            return Status::need_more;
        }

        std::string_view found = std::string_view(buffer_).substr(start_, newline);
        start_ += newline + 1;
        scanned_ = 0;
        if (found.ends_with('\r')) found.remove_suffix(1);
        if (found.empty()) continue;  // blank lines carry nothing; skipping them costs no reply
        line.assign(found);
        return Status::line;
    }
}

}  // namespace kleak::proto
