#include "cache_reconciliation.h"

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace kleak::core {

namespace {

bool parse_number(std::string_view word, std::uint64_t& out) {
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), out);
    return ec == std::errc() && end == word.data() + word.size();
}

std::vector<std::string_view> words(std::string_view line) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
        const std::size_t start = i;
        while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
        if (i > start) out.push_back(line.substr(start, i - start));
    }
    return out;
}

struct CacheTotals {
    std::uint64_t live = 0;
    std::uint64_t live_bytes = 0;
    bool reclaimable = false;
    std::uint32_t kmalloc_size = 0;  // a kmalloc cache's slab size; 0: not one
    absl::flat_hash_set<SiteId> sites;
};

}  // namespace

SlabinfoParse parse_slabinfo(std::string_view text) {
    SlabinfoParse result;
    std::size_t line_no = 0;
    while (!text.empty()) {
        const std::size_t eol = text.find('\n');
        const std::string_view line = text.substr(0, eol);
        text = eol == std::string_view::npos ? std::string_view{} : text.substr(eol + 1);
        ++line_no;
        if (line_no == 1) {
            if (!line.starts_with("slabinfo - version: 2.")) {
                result.error = "not /proc/slabinfo version 2.x: '" + std::string(line.substr(0, 40)) + "'";
                return result;
            }
            continue;
        }
        if (line.empty() || line.starts_with('#')) continue;
        // name active_objs num_objs objsize objperslab pagesperslab : tunables ...
        const auto w = words(line);
        SlabinfoRow row;
        std::uint64_t objsize = 0;
        if (w.size() < 4 || !parse_number(w[1], row.active_objs) || !parse_number(w[2], row.num_objs) ||
            !parse_number(w[3], objsize) || objsize > UINT32_MAX) {
            result.error = "line " + std::to_string(line_no) + " of /proc/slabinfo does not parse";
            continue;
        }
        row.name = std::string(w[0]);
        row.objsize = static_cast<std::uint32_t>(objsize);
        result.rows.push_back(std::move(row));
    }
    return result;
}

namespace {

// Whether a /proc/slabinfo cache can hold kmallocs of its object size: a
// kmalloc cache of any type (kmalloc-64, kmalloc-cg-64, kmalloc-rnd-03-64,
// dma-kmalloc-64) or a kmem_buckets one (msg_msg-64, memdup_user-64), all
// named "...-<size>". Another cache named so (rare) only makes the pool larger.
bool in_kmalloc_pool(const SlabinfoRow& row) {
    static constexpr std::uint32_t kSizes[] = {8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192};
    if (std::find(std::begin(kSizes), std::end(kSizes), row.objsize) == std::end(kSizes)) return false;
    return row.name.ends_with("-" + kmalloc_size_text(row.objsize));
}

struct Pool {
    std::uint64_t live = 0;           // kleakd's, over its kmalloc caches of the size
    std::uint64_t kernel_active = 0;  // the kernel's, over its caches of the size
};

std::uint64_t excess_over(std::uint64_t live, std::uint64_t kernel, const ReconcileRules& rules) {
    const double floor =
        std::max(static_cast<double>(rules.min_excess), rules.min_excess_share * static_cast<double>(live));
    return live > kernel && static_cast<double>(live - kernel) >= floor ? live - kernel : 0;
}

}  // namespace

Reconciliation reconcile_caches(const Tracker& tracker, const CacheNames& names,
                                std::span<const SlabinfoRow> slabinfo, const ReconcileRules& rules) {
    // By name: two addresses of one name (a cache destroyed and made again) are one cache to the kernel.
    absl::flat_hash_map<std::string, CacheTotals> by_name;
    absl::flat_hash_map<std::uint64_t, std::string> key_names;
    tracker.for_each_class([&](const AllocationClass& c, std::uint64_t key, std::uint64_t live) {
        if (key == 0 || live == 0) return;
        auto [it, fresh] = key_names.try_emplace(key);
        if (fresh) it->second = cache_name(key, names);
        CacheTotals& t = by_name[it->second];
        t.live += live;
        t.live_bytes += live * c.bytes_alloc;
        t.reclaimable |= cache_reclaimable(key, names);
        t.kmalloc_size = kmalloc_key_size(key);
        t.sites.insert(c.site);
    });
    absl::flat_hash_map<std::string_view, const SlabinfoRow*> kernel;
    absl::flat_hash_map<std::uint32_t, Pool> pools;  // by kmalloc size
    for (const SlabinfoRow& row : slabinfo) {
        kernel.emplace(row.name, &row);
        if (in_kmalloc_pool(row)) pools[row.objsize].kernel_active += row.active_objs;
    }
    for (const auto& [name, t] : by_name)
        if (t.kmalloc_size != 0) pools[t.kmalloc_size].live += t.live;

    Reconciliation result;
    result.slabinfo = !slabinfo.empty();
    result.caches.reserve(by_name.size());
    for (const auto& [name, t] : by_name) {
        CacheRow row{name, t.live, t.live_bytes, std::nullopt, std::nullopt, std::nullopt, 0, t.reclaimable,
                     t.sites.size()};
        if (const auto it = kernel.find(name); it != kernel.end()) {
            row.kernel_active = it->second->active_objs;
            row.kernel_total = it->second->num_objs;
        }
        if (!result.slabinfo) {
        } else if (t.kmalloc_size != 0) {
            // Its share of its size's excess, by its live objects.
            const Pool& pool = pools[t.kmalloc_size];
            row.kernel_pool_active = pool.kernel_active;
            row.pool_live = pool.live;
            const std::uint64_t excess = excess_over(pool.live, pool.kernel_active, rules);
            row.excess = pool.live == 0 ? 0 : static_cast<std::uint64_t>(std::llround(
                                                  static_cast<double>(excess) * static_cast<double>(t.live) /
                                                  static_cast<double>(pool.live)));
        } else if (row.kernel_active) {
            row.excess = excess_over(t.live, *row.kernel_active, rules);
        }
        result.caches.push_back(std::move(row));
    }
    std::sort(result.caches.begin(), result.caches.end(), [](const CacheRow& a, const CacheRow& b) {
        return a.live != b.live ? a.live > b.live : a.name < b.name;
    });

    // Each site's share of its caches' excess, in proportion to its live
    // objects there; it names the cache it holds most live objects in.
    absl::flat_hash_map<std::string_view, const CacheRow*> short_of;
    for (const CacheRow& row : result.caches)
        if (row.excess > 0) short_of.emplace(row.name, &row);
    result.sites.resize(tracker.sites().size());
    if (short_of.empty()) return result;
    struct SiteInCache {
        const CacheRow* row;
        std::uint64_t live = 0;
    };
    absl::flat_hash_map<std::pair<SiteId, const CacheRow*>, std::uint64_t> site_live;
    tracker.for_each_class([&](const AllocationClass& c, std::uint64_t key, std::uint64_t live) {
        if (key == 0 || live == 0) return;
        const auto it = short_of.find(key_names.at(key));
        if (it != short_of.end()) site_live[{c.site, it->second}] += live;
    });
    std::vector<double> share(tracker.sites().size(), 0.0);
    std::vector<SiteInCache> most(tracker.sites().size(), SiteInCache{nullptr, 0});
    for (const auto& [key, live] : site_live) {
        const auto [site, row] = key;
        share[site] += static_cast<double>(row->excess) * static_cast<double>(live) / static_cast<double>(row->live);
        SiteInCache& m = most[site];
        if (!m.row || live > m.live || (live == m.live && row->name < m.row->name)) m = {row, live};
    }
    for (SiteId id = 0; id < share.size(); ++id) {
        if (!most[id].row) continue;
        const auto estimate = static_cast<std::uint64_t>(std::llround(share[id]));
        if (estimate == 0) continue;
        const CacheRow& row = *most[id].row;
        const bool pooled = row.kernel_pool_active.has_value();
        result.sites[id] = UntrackedShare{pooled ? "kmalloc caches of size " + row.name.substr(row.name.rfind('-') + 1)
                                                 : row.name,
                                          std::min(estimate, tracker.sites()[id].outstanding),
                                          pooled ? row.pool_live : row.live,
                                          pooled ? *row.kernel_pool_active : row.kernel_active.value_or(0)};
    }
    return result;
}

std::vector<std::uint64_t> site_cache_keys(const Tracker& tracker) {
    // One pass, no hashing (a suspects query pays this): a cache is one class
    // per site, but for kmalloc-large, whose sizes are one cache and several
    // classes, so those add up apart.
    struct Best {
        std::uint64_t key = 0, live = 0, first = 0, large_live = 0;
    };
    const std::uint64_t large = kmalloc_cache_key(0, kKmallocMaxCacheSize + 1);
    std::vector<Best> best(tracker.sites().size());
    tracker.for_each_class([&](const AllocationClass& c, std::uint64_t key, std::uint64_t live) {
        if (key == 0) return;
        Best& b = best[c.site];
        if (b.first == 0) b.first = key;
        if (key == large) {
            b.large_live += live;
        } else if (live > b.live) {
            b.key = key;
            b.live = live;
        }
    });
    std::vector<std::uint64_t> out(best.size());
    for (std::size_t i = 0; i < best.size(); ++i) {
        const Best& b = best[i];
        out[i] = b.large_live == 0 && b.live == 0 ? b.first  // none live: its first cache
                 : b.large_live > b.live          ? large
                                                  : b.key;
    }
    return out;
}

std::vector<std::uint64_t> site_turnover_keys(const Tracker& tracker) {
    std::vector<std::uint64_t> keys = site_cache_keys(tracker);
    for (SiteId id = 0; id < keys.size(); ++id)
        if (keys[id] == 0) keys[id] = family_turnover_key(tracker.sites()[id].family);
    return keys;
}

std::vector<std::string> site_cache_names(std::span<const std::uint64_t> keys, const CacheNames& names) {
    std::vector<std::string> out(keys.size());
    absl::flat_hash_map<std::uint64_t, std::string> memo;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        if (keys[i] == 0) continue;
        auto [it, fresh] = memo.try_emplace(keys[i]);
        if (fresh) it->second = cache_name(keys[i], names);
        out[i] = it->second;
    }
    return out;
}

std::vector<std::uint64_t> unnamed_caches(const Tracker& tracker, const CacheNames& names) {
    absl::flat_hash_set<std::uint64_t> seen;
    tracker.for_each_class([&](const AllocationClass&, std::uint64_t key, std::uint64_t) {
        if (key != 0 && !is_kmalloc_cache_key(key) && !names.contains(key)) seen.insert(key);
    });
    std::vector<std::uint64_t> out(seen.begin(), seen.end());
    std::sort(out.begin(), out.end());
    return out;
}

nlohmann::json caches_to_json(const Reconciliation& result, std::size_t top) {
    nlohmann::json rows = nlohmann::json::array();
    const std::size_t n = top == 0 ? result.caches.size() : std::min(top, result.caches.size());
    for (std::size_t i = 0; i < n; ++i) {
        const CacheRow& c = result.caches[i];
        nlohmann::json row{{"cache", c.name},           {"live", c.live}, {"live_bytes", c.live_bytes},
                           {"kernel_active", nullptr},  {"kernel_total", nullptr}, {"coverage", nullptr},
                           {"excess", c.excess},        {"reclaimable", c.reclaimable}, {"sites", c.sites}};
        if (c.kernel_active) {
            row["kernel_active"] = *c.kernel_active;
            row["kernel_total"] = *c.kernel_total;
        }
        // The share of the kernel's active objects kleakd sees live (above 1: it misses frees).
        if (c.kernel_pool_active) {
            row["kernel_pool_active"] = *c.kernel_pool_active;
            row["pool_live"] = c.pool_live;
            if (*c.kernel_pool_active > 0)
                row["coverage"] = static_cast<double>(c.pool_live) / static_cast<double>(*c.kernel_pool_active);
        } else if (c.kernel_active && *c.kernel_active > 0) {
            row["coverage"] = static_cast<double>(c.live) / static_cast<double>(*c.kernel_active);
        }
        rows.push_back(std::move(row));
    }
    std::uint64_t short_caches = 0;
    for (const CacheRow& c : result.caches) short_caches += c.excess > 0;
    return {{"slabinfo", result.slabinfo},
            {"caches_total", result.caches.size()},
            {"caches_with_excess", short_caches},
            {"caches", std::move(rows)}};
}

}  // namespace kleak::core
