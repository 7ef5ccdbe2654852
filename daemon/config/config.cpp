#include "config/config.h"

#include <sys/un.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <set>
#include <span>
#include <utility>
#include <variant>

namespace kleak::config {

namespace {

using nlohmann::json;
using Errors = std::vector<ConfigError>;

// --- the schema: limits, names, and the rule each key follows -----------------

constexpr std::size_t kMaxGroupNameLength = 32;  // useradd's limit
constexpr std::int64_t kMinRetention = 1;
constexpr std::int64_t kMaxRetention = 10000;
constexpr std::chrono::seconds kMinInterval{1};
constexpr std::chrono::seconds kMaxInterval = std::chrono::hours{24};
// bind() needs the path and its terminating NUL to fit in sun_path.
constexpr std::size_t kMaxSocketPathLength = sizeof(sockaddr_un::sun_path) - 1;
constexpr std::int64_t kMinPrintkLines = 1;
constexpr std::int64_t kMaxPrintkLines = 1000000;
constexpr std::uint64_t kMinPrintkFileSize = std::uint64_t{64} << 10;
constexpr std::uint64_t kMaxPrintkFileSize = std::uint64_t{1} << 30;
constexpr std::int64_t kMinClients = 2;  // one for readers, one kept for an administrator
constexpr std::int64_t kMaxClients = 4096;
constexpr std::uint64_t kMinUnread = std::uint64_t{256} << 10;
constexpr std::uint64_t kMaxUnread = std::uint64_t{4} << 30;
constexpr std::int64_t kMinPrintkRetention = 1;
constexpr std::int64_t kMaxPrintkRetention = 1000;
// A config file is a few hundred bytes; this stops `--config /dev/zero`.
constexpr std::size_t kMaxFileSize = 1 << 20;

// The allocator names the file uses and the switch each one sets.
struct AllocatorSwitch {
    std::string_view name;
    bool TracingSettings::*enabled;
};
constexpr std::array<AllocatorSwitch, 5> kAllocators{{
    {"kmalloc", &TracingSettings::kmalloc},
    {"kmem_cache", &TracingSettings::kmem_cache},
    {"page", &TracingSettings::page},
    {"percpu", &TracingSettings::percpu},
    {"vmalloc", &TracingSettings::vmalloc},
}};
constexpr auto kAllocatorNames = [] {
    std::array<std::string_view, kAllocators.size()> names{};
    std::transform(kAllocators.begin(), kAllocators.end(), names.begin(), [](const auto& a) { return a.name; });
    return names;
}();

constexpr std::array<std::string_view, 3> kAttachModes{"auto", "tp_btf", "raw_tp"};
constexpr std::array<std::string_view, 3> kStackModes{"suspects", "all", "off"};
constexpr std::array<std::string_view, 7> kLogLevels{"trace", "debug", "info", "warn", "error", "critical", "off"};

std::string join(std::span<const std::string_view> names, std::string_view quote) {
    std::string text;
    for (const std::string_view name : names)
        text += (text.empty() ? "" : ", ") + std::string(quote) + std::string(name) + std::string(quote);
    return text;
}

// Each rule finishes the sentence "must be ...". Type errors and value errors
// both quote it, so a user always learns what would have been accepted.
constexpr std::string_view kObjectRule = "a JSON object";
constexpr std::string_view kSocketPathRule = "an absolute file path, e.g. \"/run/kleakd/kleakd.sock\"";
const std::string kGroupRule =
    "a group name matching [a-z_][a-z0-9_-]*, at most " + std::to_string(kMaxGroupNameLength) + " characters";
constexpr std::string_view kModeRule =
    "an octal string from \"0600\" to \"0777\" that gives the owner read and write and others no write, "
    "e.g. \"0660\"";
const std::string kAdminGroupRule = "\"\" (root only) or " + kGroupRule;
const std::string kMaxClientsRule =
    "an integer from " + std::to_string(kMinClients) + " to " + std::to_string(kMaxClients);
const std::string kMaxUnreadRule =
    "a size string from " + core::format_size(kMinUnread) + " to " + core::format_size(kMaxUnread) + ", e.g. \"64M\"";
constexpr std::string_view kSnapshotDirectoryRule = "an absolute directory path, e.g. \"/var/lib/kleakd/snapshots\"";
constexpr std::string_view kIntervalRule =  // kMinInterval to kMaxInterval
    "a duration from 1s to 24h: a number with a unit (\"30s\", \"5m\", \"1h\") or an integer of seconds";
const std::string kRetentionRule =
    "an integer from " + std::to_string(kMinRetention) + " to " + std::to_string(kMaxRetention);
constexpr std::string_view kBufferSizeRule = "a size string, e.g. \"8M\"";
constexpr std::string_view kBooleanRule = "true or false";
const std::string kPrintkLinesRule =
    "an integer from " + std::to_string(kMinPrintkLines) + " to " + std::to_string(kMaxPrintkLines);
constexpr std::string_view kPrintkDirectoryRule = "an absolute directory path, e.g. \"/var/lib/kleakd/printk\"";
const std::string kPrintkMaxSizeRule = "a size string from " + core::format_size(kMinPrintkFileSize) + " to " +
                                       core::format_size(kMaxPrintkFileSize) + ", e.g. \"16M\"";
const std::string kPrintkRetentionRule =
    "an integer from " + std::to_string(kMinPrintkRetention) + " to " + std::to_string(kMaxPrintkRetention);
const std::string kAllocatorsRule = "a non-empty array of distinct names from " + join(kAllocatorNames, "\"");
const std::string kAllocatorNameRule = "one of " + join(kAllocatorNames, "\"");
const std::string kLogLevelRule = "one of " + join(kLogLevels, "");
const std::string kAttachRule = "one of " + join(kAttachModes, "\"");
const std::string kStacksRule = "one of " + join(kStackModes, "\"");
constexpr std::string_view kStackSampleShiftRule = "an integer from 0 to 32";
constexpr std::string_view kMinRiseRule = "an integer from 1 to 1000000";
constexpr std::string_view kVerdictIntervalRule =
    "a duration from 1s to 10m: a number with a unit (\"10s\", \"1m\") or an integer of seconds";

std::string join_key(std::string_view parent, std::string_view name) {
    return parent.empty() ? std::string(name) : std::string(parent) + "." + std::string(name);
}

std::string in_quotes(std::string_view text) { return "'" + std::string(text) + "'"; }

// "<what>; must be <rule>[; did you mean ...]", the shape of every value error.
void report_invalid(Errors& errors, const std::string& key, const std::string& what, std::string_view rule,
                    const std::string& suggestion = "") {
    errors.push_back({key, what + "; must be " + std::string(rule) + suggestion});
}

// --- "did you mean" -----------------------------------------------------------

// Edits (insert, delete, substitute, swap two neighbours) turning a into b:
// the optimal-string-alignment distance, so "debgu" is one edit from "debug".
std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        for (std::size_t j = 1; j <= b.size(); ++j) {
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

// The one candidate close to `word`: a typo (a few edits, fewer for short
// names so "on" does not suggest "off") or a prefix either way ("warning" ->
// "warn", "snap" -> "snapshots"). Nothing when two are equally close.
std::optional<std::string_view> closest_match(std::string_view word, std::span<const std::string_view> candidates) {
    std::optional<std::string_view> best;
    std::size_t best_distance = std::numeric_limits<std::size_t>::max();
    bool tied = false;
    for (const std::string_view candidate : candidates) {
        const std::size_t distance = edit_distance(word, candidate);
        const std::size_t shorter = std::min(word.size(), candidate.size());
        const bool typo = distance <= std::max<std::size_t>(1, candidate.size() / 3);
        const bool prefix = shorter >= 3 && (word.starts_with(candidate) || candidate.starts_with(word));
        if (!typo && !prefix) continue;
        if (distance < best_distance) {
            best = candidate;
            best_distance = distance;
            tied = false;
        } else if (distance == best_distance) {
            tied = true;
        }
    }
    return tied ? std::nullopt : best;
}

std::string did_you_mean(std::string_view word, std::span<const std::string_view> candidates) {
    const auto match = closest_match(word, candidates);
    return match ? "; did you mean \"" + std::string(*match) + "\"?" : "";
}

// --- stage 1: text -> JSON ----------------------------------------------------

// nlohmann keeps the last of two equal keys without a word; a hand-edited file
// with two "snapshots" sections would silently lose the first. This watches
// the parse and reports every repeated key with its path.
class DuplicateKeyFinder {
public:
    explicit DuplicateKeyFinder(Errors& errors) : errors_(errors) {}

    bool on_event(json::parse_event_t event, const json& parsed) {
        switch (event) {
            case json::parse_event_t::object_start:
            case json::parse_event_t::array_start:
                containers_.push_back({event == json::parse_event_t::array_start, path_of_next_value(), {}, 0});
                break;
            case json::parse_event_t::object_end:
            case json::parse_event_t::array_end:
                containers_.pop_back();
                break;
            case json::parse_event_t::key: {
                Container& object = containers_.back();
                const auto& name = parsed.get_ref<const std::string&>();
                pending_key_path_ = join_key(object.path, name);
                if (!object.keys.insert(name).second)
                    errors_.push_back({pending_key_path_, "duplicate key; only one may be given"});
                break;
            }
            case json::parse_event_t::value:
                path_of_next_value();  // advances an enclosing array's index
                break;
        }
        return true;
    }

private:
    struct Container {
        bool is_array;
        std::string path;
        std::set<std::string, std::less<>> keys;
        std::size_t next_index;
    };

    std::string path_of_next_value() {
        if (containers_.empty() || !containers_.back().is_array) return pending_key_path_;
        Container& array = containers_.back();
        return array.path + "[" + std::to_string(array.next_index++) + "]";
    }

    Errors& errors_;
    std::vector<Container> containers_;
    std::string pending_key_path_;
};

std::optional<json> parse_json(std::string_view text, Errors& errors) {
    DuplicateKeyFinder duplicates(errors);
    const json::parser_callback_t watch = [&duplicates](int /*depth*/, json::parse_event_t event, json& parsed) {
        return duplicates.on_event(event, parsed);
    };
    try {
        return json::parse(text, watch, /*allow_exceptions=*/true, /*ignore_comments=*/true);
    } catch (const json::exception& e) {
        // e.what() is "[json.exception.parse_error.101] parse error at line 3, column 7: ..."; the tag
        // means nothing to a user, the position does.
        const std::string_view what = e.what();
        const auto tag_end = what.find("] ");
        errors.push_back({"", "invalid JSON: " + std::string(tag_end == what.npos ? what : what.substr(tag_end + 2))});
        return std::nullopt;
    }
}

// --- stage 2: JSON -> the file's values, typed but not yet checked -------------

// A value as the file gave it, with the key path it came from.
template <typename T>
struct Raw {
    T value;
    std::string key;
};

using RawInterval = std::variant<std::string, std::int64_t>;

struct RawSocket {
    std::optional<Raw<std::string>> path, group, mode, admin_group, max_unread;
    std::optional<Raw<std::int64_t>> max_clients;
    std::optional<Raw<RawInterval>> idle_timeout;
};
struct RawSnapshots {
    std::optional<Raw<std::string>> directory;
    std::optional<Raw<RawInterval>> interval, checkpoint_interval;
    std::optional<Raw<std::int64_t>> retention;
};
struct RawTracing {
    std::optional<Raw<std::string>> buffer_size;
    std::optional<Raw<std::vector<Raw<std::string>>>> allocators;  // only the elements that are strings
    std::optional<Raw<std::string>> attach;
    std::optional<Raw<std::string>> stacks;
    std::optional<Raw<std::int64_t>> stack_sample_shift;
};
struct RawPrintk {
    std::optional<Raw<bool>> enabled;
    std::optional<Raw<std::int64_t>> lines;
    std::optional<Raw<bool>> file_enabled;
    std::optional<Raw<std::string>> file_directory, file_max_size;
    std::optional<Raw<std::int64_t>> file_retention;
};
struct RawVerdicts {
    std::optional<Raw<RawInterval>> interval, window, recent;
    std::optional<Raw<std::int64_t>> min_rise;
};
struct RawConfig {
    RawSocket socket;
    RawSnapshots snapshots;
    RawTracing tracing;
    RawPrintk printk;
    RawVerdicts verdicts;
    std::optional<Raw<std::string>> log_level;
};

std::string describe_type(const json& value) {
    if (value.is_null()) return "null";
    if (value.is_number_integer()) return "an integer";
    if (value.is_number_float()) return "a fractional number";
    const std::string name = value.type_name();
    return (name == "object" || name == "array" ? "an " : "a ") + name;
}

void report_type(Errors& errors, const std::string& key, const json& value, std::string_view rule) {
    report_invalid(errors, key, "is " + describe_type(value), rule);
}

// Any JSON integer as int64; unsigned values past its range saturate (every
// rule rejects them anyway).
std::int64_t as_int64(const json& value) {
    if (value.is_number_unsigned()) {
        const auto u = value.get<std::uint64_t>();
        return u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                   ? std::numeric_limits<std::int64_t>::max()
                   : static_cast<std::int64_t>(u);
    }
    return value.get<std::int64_t>();
}

// Hands out the members of one JSON object by name, checking their JSON types.
// The names asked for are the object's schema: report_unknown_keys() then
// flags everything else, so the list of keys lives only in the code reading
// them.
class ObjectReader {
public:
    ObjectReader(const json& object, std::string path, Errors& errors)
        : object_(object), path_(std::move(path)), errors_(errors) {}

    // A nested section; absent or not an object (reported) reads as empty.
    ObjectReader section(std::string_view name) {
        static const json empty = json::object();
        const json* value = find(name);
        if (value && !value->is_object()) report_type(errors_, key_of(name), *value, kObjectRule);
        return ObjectReader(value && value->is_object() ? *value : empty, key_of(name), errors_);
    }

    std::optional<Raw<std::string>> string(std::string_view name, std::string_view rule) {
        const json* value = find(name);
        if (!value) return std::nullopt;
        if (!value->is_string()) return type_error(name, *value, rule);
        return Raw<std::string>{value->get<std::string>(), key_of(name)};
    }

    std::optional<Raw<bool>> boolean(std::string_view name, std::string_view rule) {
        const json* value = find(name);
        if (!value) return std::nullopt;
        if (!value->is_boolean()) return type_error(name, *value, rule);
        return Raw<bool>{value->get<bool>(), key_of(name)};
    }

    std::optional<Raw<std::int64_t>> integer(std::string_view name, std::string_view rule) {
        const json* value = find(name);
        if (!value) return std::nullopt;
        if (!value->is_number_integer()) return type_error(name, *value, rule);
        return Raw<std::int64_t>{as_int64(*value), key_of(name)};
    }

    std::optional<Raw<RawInterval>> string_or_integer(std::string_view name, std::string_view rule) {
        const json* value = find(name);
        if (!value) return std::nullopt;
        if (value->is_string()) return Raw<RawInterval>{value->get<std::string>(), key_of(name)};
        if (value->is_number_integer()) return Raw<RawInterval>{as_int64(*value), key_of(name)};
        return type_error(name, *value, rule);
    }

    std::optional<Raw<std::vector<Raw<std::string>>>> string_array(std::string_view name, std::string_view rule,
                                                                   std::string_view element_rule) {
        const json* value = find(name);
        if (!value) return std::nullopt;
        if (!value->is_array()) return type_error(name, *value, rule);
        Raw<std::vector<Raw<std::string>>> strings{{}, key_of(name)};
        for (std::size_t i = 0; i < value->size(); ++i) {
            const json& element = (*value)[i];
            const std::string element_key = strings.key + "[" + std::to_string(i) + "]";
            if (element.is_string())
                strings.value.push_back({element.get<std::string>(), element_key});
            else
                report_type(errors_, element_key, element, element_rule);
        }
        return strings;
    }

    void report_unknown_keys() const {
        for (const auto& [name, value] : object_.items()) {
            if (std::find(known_.begin(), known_.end(), name) != known_.end()) continue;
            const std::string suggestion = did_you_mean(name, known_);
            std::string valid;
            for (const std::string_view known : known_) valid += (valid.empty() ? "" : ", ") + std::string(known);
            errors_.push_back({key_of(name), suggestion.empty() ? "unknown key; valid keys here: " + valid
                                                                : "unknown key" + suggestion});
        }
    }

private:
    std::string key_of(std::string_view name) const { return join_key(path_, name); }

    const json* find(std::string_view name) {
        known_.push_back(name);
        const auto it = object_.find(name);
        return it == object_.end() ? nullptr : &*it;
    }

    std::nullopt_t type_error(std::string_view name, const json& value, std::string_view rule) {
        report_type(errors_, key_of(name), value, rule);
        return std::nullopt;
    }

    const json& object_;
    std::string path_;
    Errors& errors_;
    std::vector<std::string_view> known_;
};

RawConfig read_raw_config(const json& document, Errors& errors) {
    RawConfig raw;
    ObjectReader top(document, "", errors);

    ObjectReader socket = top.section("socket");
    raw.socket.path = socket.string("path", kSocketPathRule);
    raw.socket.group = socket.string("group", kGroupRule);
    raw.socket.mode = socket.string("mode", kModeRule);
    raw.socket.admin_group = socket.string("admin_group", kAdminGroupRule);
    raw.socket.max_clients = socket.integer("max_clients", kMaxClientsRule);
    raw.socket.idle_timeout = socket.string_or_integer("idle_timeout", kIntervalRule);
    raw.socket.max_unread = socket.string("max_unread", kMaxUnreadRule);
    socket.report_unknown_keys();

    ObjectReader snapshots = top.section("snapshots");
    raw.snapshots.directory = snapshots.string("directory", kSnapshotDirectoryRule);
    raw.snapshots.interval = snapshots.string_or_integer("interval", kIntervalRule);
    raw.snapshots.retention = snapshots.integer("retention", kRetentionRule);
    raw.snapshots.checkpoint_interval = snapshots.string_or_integer("checkpoint_interval", kIntervalRule);
    snapshots.report_unknown_keys();

    ObjectReader tracing = top.section("tracing");
    raw.tracing.buffer_size = tracing.string("buffer_size", kBufferSizeRule);
    raw.tracing.allocators = tracing.string_array("allocators", kAllocatorsRule, kAllocatorNameRule);
    raw.tracing.attach = tracing.string("attach", kAttachRule);
    raw.tracing.stacks = tracing.string("stacks", kStacksRule);
    raw.tracing.stack_sample_shift = tracing.integer("stack_sample_shift", kStackSampleShiftRule);
    tracing.report_unknown_keys();

    ObjectReader verdicts = top.section("verdicts");
    raw.verdicts.interval = verdicts.string_or_integer("interval", kVerdictIntervalRule);
    raw.verdicts.window = verdicts.string_or_integer("window", kIntervalRule);
    raw.verdicts.recent = verdicts.string_or_integer("recent", kIntervalRule);
    raw.verdicts.min_rise = verdicts.integer("min_rise", kMinRiseRule);
    verdicts.report_unknown_keys();

    ObjectReader printk = top.section("printk");
    raw.printk.enabled = printk.boolean("enabled", kBooleanRule);
    raw.printk.lines = printk.integer("lines", kPrintkLinesRule);
    ObjectReader printk_file = printk.section("file");
    raw.printk.file_enabled = printk_file.boolean("enabled", kBooleanRule);
    raw.printk.file_directory = printk_file.string("directory", kPrintkDirectoryRule);
    raw.printk.file_max_size = printk_file.string("max_size", kPrintkMaxSizeRule);
    raw.printk.file_retention = printk_file.integer("retention", kPrintkRetentionRule);
    printk_file.report_unknown_keys();
    printk.report_unknown_keys();

    raw.log_level = top.string("log_level", kLogLevelRule);
    top.report_unknown_keys();
    return raw;
}

// --- stage 3: checked values -> Settings ---------------------------------------
// Each check reports its own errors under the value's key and returns the
// setting, or nothing when the value is invalid.

std::optional<std::filesystem::path> check_socket_path(const Raw<std::string>& raw, Errors& errors) {
    const std::filesystem::path path(raw.value);
    if (!path.is_absolute()) {
        report_invalid(errors, raw.key, in_quotes(raw.value) + " is not absolute", kSocketPathRule);
    } else if (!path.has_filename()) {
        report_invalid(errors, raw.key, in_quotes(raw.value) + " names a directory, not a socket file",
                       kSocketPathRule);
    } else if (raw.value.size() > kMaxSocketPathLength) {
        report_invalid(errors, raw.key,
                       in_quotes(raw.value) + " is " + std::to_string(raw.value.size()) +
                           " bytes; a Unix socket path holds at most " + std::to_string(kMaxSocketPathLength),
                       kSocketPathRule);
    } else {
        return path;
    }
    return std::nullopt;
}

std::optional<std::string> check_group(const Raw<std::string>& raw, Errors& errors) {
    const std::string& name = raw.value;
    const auto valid_first = [](char c) { return (c >= 'a' && c <= 'z') || c == '_'; };
    const auto valid_rest = [&](char c) { return valid_first(c) || (c >= '0' && c <= '9') || c == '-'; };
    const bool valid = !name.empty() && name.size() <= kMaxGroupNameLength && valid_first(name.front()) &&
                       std::all_of(name.begin() + 1, name.end(), valid_rest);
    if (valid) return name;
    report_invalid(errors, raw.key, in_quotes(name) + " is not a valid group name", kGroupRule);
    return std::nullopt;
}

std::optional<std::string> check_admin_group(const Raw<std::string>& raw, Errors& errors) {
    if (raw.value.empty()) return raw.value;  // none: only root may change state
    const std::size_t before = errors.size();
    if (auto name = check_group(raw, errors)) return name;
    errors.resize(before);
    report_invalid(errors, raw.key, in_quotes(raw.value) + " is not a valid group name", kAdminGroupRule);
    return std::nullopt;
}

std::optional<std::uint64_t> check_max_unread(const Raw<std::string>& raw, Errors& errors) {
    core::SizeParse parsed = core::parse_byte_size(raw.value, kMinUnread, kMaxUnread);
    if (!parsed.bytes) errors.push_back({raw.key, std::move(parsed.error)});
    return parsed.bytes;
}

std::optional<unsigned> check_mode(const Raw<std::string>& raw, Errors& errors) {
    const std::string& text = raw.value;
    unsigned mode = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), mode, 8);
    if (text.empty() || text.size() > 4 || ec != std::errc{} || end != text.data() + text.size()) {
        report_invalid(errors, raw.key, in_quotes(text) + " is not an octal mode", kModeRule);
    } else if (mode > 0777) {
        report_invalid(errors, raw.key, in_quotes(text) + " sets bits beyond 0777", kModeRule);
    } else if ((mode & 0600) != 0600) {
        report_invalid(errors, raw.key,
                       in_quotes(text) + " does not let the daemon's own user read and write the socket", kModeRule);
    } else if ((mode & 0002) != 0) {
        report_invalid(errors, raw.key, in_quotes(text) + " lets every user on the host control the daemon", kModeRule);
    } else {
        return mode;
    }
    return std::nullopt;
}

std::optional<std::filesystem::path> check_absolute_directory(const Raw<std::string>& raw, Errors& errors,
                                                              std::string_view rule) {
    const std::filesystem::path path(raw.value);
    if (path.is_absolute()) return path;
    report_invalid(errors, raw.key, in_quotes(raw.value) + " is not absolute", rule);
    return std::nullopt;
}

std::optional<std::filesystem::path> check_snapshot_directory(const Raw<std::string>& raw, Errors& errors) {
    return check_absolute_directory(raw, errors, kSnapshotDirectoryRule);
}

std::optional<std::filesystem::path> check_printk_directory(const Raw<std::string>& raw, Errors& errors) {
    return check_absolute_directory(raw, errors, kPrintkDirectoryRule);
}

// "30s", "5m", "1h", or a bare number of seconds ("90"); nothing when `text`
// is none of those. Values too large to matter saturate rather than wrap.
std::optional<std::int64_t> parse_duration_seconds(std::string_view text) {
    std::int64_t count = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), count);
    if (ec == std::errc::invalid_argument || end == text.data() || count < 0) return std::nullopt;
    if (ec == std::errc::result_out_of_range) count = std::numeric_limits<std::int64_t>::max();
    const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    static constexpr std::pair<std::string_view, std::int64_t> kUnits[] = {{"", 1}, {"s", 1}, {"m", 60}, {"h", 3600}};
    const auto unit_it =
        std::find_if(std::begin(kUnits), std::end(kUnits), [&](const auto& u) { return u.first == unit; });
    if (unit_it == std::end(kUnits)) return std::nullopt;
    const std::int64_t seconds_per_unit = unit_it->second;
    return count > std::numeric_limits<std::int64_t>::max() / seconds_per_unit
               ? std::numeric_limits<std::int64_t>::max()
               : count * seconds_per_unit;
}

std::optional<std::chrono::seconds> check_interval(const Raw<RawInterval>& raw, Errors& errors) {
    std::optional<std::int64_t> seconds;
    std::string shown;
    if (const auto* text = std::get_if<std::string>(&raw.value)) {
        seconds = parse_duration_seconds(*text);
        shown = in_quotes(*text);
        if (!seconds) {
            report_invalid(errors, raw.key, shown + " is not a duration", kIntervalRule);
            return std::nullopt;
        }
    } else {
        seconds = std::get<std::int64_t>(raw.value);
        shown = std::to_string(*seconds);
    }
    if (*seconds < kMinInterval.count() || *seconds > kMaxInterval.count()) {
        report_invalid(errors, raw.key, shown + " is out of range", kIntervalRule);
        return std::nullopt;
    }
    return std::chrono::seconds{*seconds};
}

// An integer from `min` to `max` (which T holds), else an error quoting `rule`.
template <typename T>
std::optional<T> check_integer_range(const Raw<std::int64_t>& raw, Errors& errors, std::int64_t min, std::int64_t max,
                                     std::string_view rule) {
    if (raw.value >= min && raw.value <= max) return static_cast<T>(raw.value);
    report_invalid(errors, raw.key, std::to_string(raw.value) + " is out of range", rule);
    return std::nullopt;
}

std::optional<std::size_t> check_max_clients(const Raw<std::int64_t>& raw, Errors& errors) {
    return check_integer_range<std::size_t>(raw, errors, kMinClients, kMaxClients, kMaxClientsRule);
}

std::optional<unsigned> check_retention(const Raw<std::int64_t>& raw, Errors& errors) {
    return check_integer_range<unsigned>(raw, errors, kMinRetention, kMaxRetention, kRetentionRule);
}

std::optional<std::size_t> check_printk_lines(const Raw<std::int64_t>& raw, Errors& errors) {
    return check_integer_range<std::size_t>(raw, errors, kMinPrintkLines, kMaxPrintkLines, kPrintkLinesRule);
}

std::optional<unsigned> check_printk_retention(const Raw<std::int64_t>& raw, Errors& errors) {
    return check_integer_range<unsigned>(raw, errors, kMinPrintkRetention, kMaxPrintkRetention, kPrintkRetentionRule);
}

// Any boolean is valid; the JSON type was checked when it was read.
std::optional<bool> check_boolean(const Raw<bool>& raw, Errors& /*errors*/) { return raw.value; }

std::optional<std::uint64_t> check_buffer_size(const Raw<std::string>& raw, Errors& errors) {
    core::SizeParse parsed = core::parse_buffer_size(raw.value);
    if (!parsed.bytes) errors.push_back({raw.key, std::move(parsed.error)});
    return parsed.bytes;
}

std::optional<std::uint64_t> check_printk_file_max_size(const Raw<std::string>& raw, Errors& errors) {
    core::SizeParse parsed = core::parse_byte_size(raw.value, kMinPrintkFileSize, kMaxPrintkFileSize);
    if (!parsed.bytes) errors.push_back({raw.key, std::move(parsed.error)});
    return parsed.bytes;
}

// The distinct allocator names listed, each known.
std::optional<std::vector<std::string>> check_allocators(const Raw<std::vector<Raw<std::string>>>& raw,
                                                         Errors& errors) {
    const std::size_t errors_before = errors.size();
    std::vector<std::string> seen;
    for (const Raw<std::string>& name : raw.value) {
        if (std::find(kAllocatorNames.begin(), kAllocatorNames.end(), name.value) == kAllocatorNames.end())
            report_invalid(errors, name.key, in_quotes(name.value) + " is not an allocator", kAllocatorNameRule,
                           did_you_mean(name.value, kAllocatorNames));
        else if (std::find(seen.begin(), seen.end(), name.value) != seen.end())
            report_invalid(errors, name.key, in_quotes(name.value) + " is listed twice", kAllocatorsRule);
        else
            seen.push_back(name.value);
    }
    if (raw.value.empty()) report_invalid(errors, raw.key, "no allocator is listed", kAllocatorsRule);
    if (errors.size() != errors_before) return std::nullopt;
    return seen;
}

std::optional<unsigned> check_min_rise(const Raw<std::int64_t>& raw, Errors& errors) {
    return check_integer_range<unsigned>(raw, errors, 1, 1000000, kMinRiseRule);
}

// verdicts.interval: 1s to 10m (core/site_history.h, kMaxHistoryIntervalNs).
std::optional<std::chrono::seconds> check_verdict_interval(const Raw<RawInterval>& raw, Errors& errors) {
    const auto seconds = check_interval(raw, errors);
    if (!seconds || *seconds <= std::chrono::minutes{10}) return seconds;
    report_invalid(errors, raw.key, std::to_string(seconds->count()) + "s is out of range", kVerdictIntervalRule);
    return std::nullopt;
}

// The window fits in the samples kept at `interval`, and `recent` in the
// window. What the file leaves out follows the interval: the window is 15
// minutes or 90 intervals, whichever is shorter, but at least 6 intervals;
// `recent` 60 s or two intervals, whichever is longer. Only values the file
// gives can conflict.
void settle_verdict_spans(const RawVerdicts& raw, VerdictSettings& v, Errors& errors) {
    const auto longest_window = v.interval * kVerdictWindowSamples;
    if (!raw.window)
        v.window = std::max<std::chrono::seconds>(v.interval * 6, std::min<std::chrono::seconds>(v.window, longest_window));
    if (!raw.recent) v.recent = std::max<std::chrono::seconds>(v.recent, v.interval * 2);
    if (v.window > longest_window) {
        errors.push_back({raw.window->key, "a window of " + std::to_string(v.window.count()) +
                                               "s is more than the " + std::to_string(kVerdictWindowSamples) +
                                               " intervals kept at full resolution (" +
                                               std::to_string(longest_window.count()) + "s at an interval of " +
                                               std::to_string(v.interval.count()) + "s)"});
        return;
    }
    if (v.recent < v.interval * 2 || v.recent >= v.window) {
        const std::string& key = raw.recent ? raw.recent->key : raw.window ? raw.window->key : raw.interval->key;
        errors.push_back({key, "recent (" + std::to_string(v.recent.count()) + "s) must be at least two intervals (" +
                                   std::to_string((v.interval * 2).count()) + "s) and less than the window (" +
                                   std::to_string(v.window.count()) + "s)"});
    }
}

std::optional<std::string> check_attach(const Raw<std::string>& raw, Errors& errors) {
    if (std::find(kAttachModes.begin(), kAttachModes.end(), raw.value) != kAttachModes.end()) return raw.value;
    report_invalid(errors, raw.key, in_quotes(raw.value) + " is not an attach mode", kAttachRule,
                   did_you_mean(raw.value, kAttachModes));
    return std::nullopt;
}

std::optional<std::string> check_stacks(const Raw<std::string>& raw, Errors& errors) {
    if (std::find(kStackModes.begin(), kStackModes.end(), raw.value) != kStackModes.end()) return raw.value;
    report_invalid(errors, raw.key, in_quotes(raw.value) + " is not a stack mode", kStacksRule,
                   did_you_mean(raw.value, kStackModes));
    return std::nullopt;
}

std::optional<std::uint32_t> check_stack_sample_shift(const Raw<std::int64_t>& raw, Errors& errors) {
    return check_integer_range<std::uint32_t>(raw, errors, 0, 32, kStackSampleShiftRule);
}

std::optional<std::string> check_log_level(const Raw<std::string>& raw, Errors& errors) {
    if (std::find(kLogLevels.begin(), kLogLevels.end(), raw.value) != kLogLevels.end()) return raw.value;
    report_invalid(errors, raw.key, in_quotes(raw.value) + " is not a log level", kLogLevelRule,
                   did_you_mean(raw.value, kLogLevels));
    return std::nullopt;
}

// Sets `target` from `raw` when the file gave the key and its value passes `check`.
template <typename RawValue, typename Check, typename Target>
void apply(const std::optional<Raw<RawValue>>& raw, Check check, Target& target, Errors& errors) {
    if (!raw) return;
    if (auto value = check(*raw, errors)) target = std::move(*value);
}

Settings compile(const RawConfig& raw, Errors& errors) {
    Settings settings;
    apply(raw.socket.path, check_socket_path, settings.socket.path, errors);
    apply(raw.socket.group, check_group, settings.socket.group, errors);
    apply(raw.socket.mode, check_mode, settings.socket.mode, errors);
    apply(raw.socket.admin_group, check_admin_group, settings.socket.admin_group, errors);
    apply(raw.socket.max_clients, check_max_clients, settings.socket.max_clients, errors);
    apply(raw.socket.idle_timeout, check_interval, settings.socket.idle_timeout, errors);
    apply(raw.socket.max_unread, check_max_unread, settings.socket.max_unread, errors);
    apply(raw.snapshots.directory, check_snapshot_directory, settings.snapshots.directory, errors);
    apply(raw.snapshots.interval, check_interval, settings.snapshots.interval, errors);
    apply(raw.snapshots.retention, check_retention, settings.snapshots.retention, errors);
    apply(raw.snapshots.checkpoint_interval, check_interval, settings.snapshots.checkpoint_interval, errors);
    apply(raw.tracing.buffer_size, check_buffer_size, settings.tracing.buffer_size, errors);
    if (raw.tracing.allocators) {
        if (const auto enabled = check_allocators(*raw.tracing.allocators, errors)) {
            for (const AllocatorSwitch& allocator : kAllocators)
                settings.tracing.*allocator.enabled =
                    std::find(enabled->begin(), enabled->end(), allocator.name) != enabled->end();
        }
    }
    apply(raw.tracing.attach, check_attach, settings.tracing.attach, errors);
    apply(raw.tracing.stacks, check_stacks, settings.tracing.stacks, errors);
    apply(raw.tracing.stack_sample_shift, check_stack_sample_shift, settings.tracing.stack_sample_shift, errors);
    apply(raw.printk.enabled, check_boolean, settings.printk.enabled, errors);
    apply(raw.printk.lines, check_printk_lines, settings.printk.lines, errors);
    apply(raw.printk.file_enabled, check_boolean, settings.printk.file_enabled, errors);
    apply(raw.printk.file_directory, check_printk_directory, settings.printk.file_directory, errors);
    apply(raw.printk.file_max_size, check_printk_file_max_size, settings.printk.file_max_size, errors);
    apply(raw.printk.file_retention, check_printk_retention, settings.printk.file_retention, errors);
    const std::size_t errors_before_verdicts = errors.size();
    apply(raw.verdicts.interval, check_verdict_interval, settings.verdicts.interval, errors);
    apply(raw.verdicts.window, check_interval, settings.verdicts.window, errors);
    apply(raw.verdicts.recent, check_interval, settings.verdicts.recent, errors);
    apply(raw.verdicts.min_rise, check_min_rise, settings.verdicts.min_rise, errors);
    // Spans are compared only once each value read is valid.
    if (errors.size() == errors_before_verdicts) settle_verdict_spans(raw.verdicts, settings.verdicts, errors);
    apply(raw.log_level, check_log_level, settings.log_level, errors);
    return settings;
}

std::string format_mode(unsigned mode) {
    char text[16];  // any unsigned fits in 11 octal digits
    std::snprintf(text, sizeof text, "%04o", mode);
    return text;
}

}  // namespace

ConfigResult parse_config(std::string_view text) {
    ConfigResult result;
    const std::optional<json> document = parse_json(text, result.errors);
    if (!document) return result;
    if (!document->is_object()) {
        report_type(result.errors, "", *document, "a JSON object at the top level, e.g. {\"log_level\": \"info\"}");
        return result;
    }
    const RawConfig raw = read_raw_config(*document, result.errors);
    Settings settings = compile(raw, result.errors);
    if (result.errors.empty()) result.settings = std::move(settings);
    return result;
}

ConfigResult load_config(const std::filesystem::path& path) {
    const auto fail = [&path](int err) {
        return ConfigResult{std::nullopt, {{"", "cannot read " + path.string() + ": " + std::strerror(err)}}};
    };
    const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!file) return fail(errno);
    std::string text;
    char chunk[8192];
    while (const std::size_t n = std::fread(chunk, 1, sizeof chunk, file.get())) {
        text.append(chunk, n);
        if (text.size() > kMaxFileSize)
            return {std::nullopt,
                    {{"", path.string() + " is larger than " + std::to_string(kMaxFileSize >> 20) +
                              " MiB; is it the right file?"}}};
    }
    if (std::ferror(file.get())) return fail(errno);
    return parse_config(text);
}

std::string format_error(const std::filesystem::path& path, const ConfigError& error) {
    return path.string() + ": " + (error.key.empty() ? "" : error.key + ": ") + error.message;
}

std::string format_errors(const std::filesystem::path& path, const std::vector<ConfigError>& errors) {
    std::string text;
    for (const ConfigError& error : errors) text += format_error(path, error) + "\n";
    return text;
}

nlohmann::json settings_to_json(const Settings& settings) {
    json allocators = json::array();
    for (const AllocatorSwitch& allocator : kAllocators)
        if (settings.tracing.*allocator.enabled) allocators.push_back(allocator.name);
    return json{
        {"socket",
         {{"path", settings.socket.path.string()},
          {"group", settings.socket.group},
          {"mode", format_mode(settings.socket.mode)},
          {"admin_group", settings.socket.admin_group},
          {"max_clients", settings.socket.max_clients},
          {"idle_timeout", std::to_string(settings.socket.idle_timeout.count()) + "s"},
          {"max_unread", core::format_size(settings.socket.max_unread)}}},
        {"snapshots",
         {{"directory", settings.snapshots.directory.string()},
          {"interval", std::to_string(settings.snapshots.interval.count()) + "s"},
          {"retention", settings.snapshots.retention},
          {"checkpoint_interval", std::to_string(settings.snapshots.checkpoint_interval.count()) + "s"}}},
        {"tracing",
         {{"buffer_size", core::format_size(settings.tracing.buffer_size)},
          {"allocators", allocators},
          {"attach", settings.tracing.attach},
          {"stacks", settings.tracing.stacks},
          {"stack_sample_shift", settings.tracing.stack_sample_shift}}},
        {"verdicts",
         {{"interval", std::to_string(settings.verdicts.interval.count()) + "s"},
          {"window", std::to_string(settings.verdicts.window.count()) + "s"},
          {"recent", std::to_string(settings.verdicts.recent.count()) + "s"},
          {"min_rise", settings.verdicts.min_rise}}},
        {"printk",
         {{"enabled", settings.printk.enabled},
          {"lines", settings.printk.lines},
          {"file",
           {{"enabled", settings.printk.file_enabled},
            {"directory", settings.printk.file_directory.string()},
            {"max_size", core::format_size(settings.printk.file_max_size)},
            {"retention", settings.printk.file_retention}}}}},
        {"log_level", settings.log_level},
    };
}

}  // namespace kleak::config
