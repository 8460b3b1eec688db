#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace gdnserve::metrics {
namespace {

static_assert(std::atomic<double>::is_always_lock_free);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

// A registration bug (see metrics.h): report and stop at start-up.
[[noreturn]] void Die(std::string_view message) {
  std::fprintf(stderr, "gdnserve metrics: %.*s\n", static_cast<int>(message.size()), message.data());
  std::abort();
}

std::vector<double> CheckedBoundaries(std::vector<double> boundaries) {
  if (!boundaries.empty() && boundaries.back() == std::numeric_limits<double>::infinity()) boundaries.pop_back();
  for (size_t i = 0; i < boundaries.size(); ++i) {
    if (!std::isfinite(boundaries[i])) Die(absl::StrCat("histogram bucket ", i, " is not finite"));
    if (i > 0 && !(boundaries[i - 1] < boundaries[i])) {
      Die(absl::StrCat("histogram buckets not strictly increasing at ", i, ": ", FormatValue(boundaries[i - 1]),
                       " then ", FormatValue(boundaries[i])));
    }
  }
  return boundaries;
}

bool IsNameChar(char c, bool first, bool colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

// `a="x",b="y"`: the inside of a series' braces.
std::string LabelText(const Labels& labels) {
  return absl::StrJoin(labels, ",", [](std::string* out, const auto& kv) {
    absl::StrAppend(out, kv.first, "=\"", EscapeLabelValue(kv.second), "\"");
  });
}

// name{labels} value\n, or name value\n without labels.
void AppendSample(std::string& out, std::string_view name, std::string_view suffix, std::string_view labels,
                  std::string_view value) {
  out.append(name).append(suffix);
  if (!labels.empty()) out.append("{").append(labels).append("}");
  out.append(" ").append(value).append("\n");
}

void AppendSeries(std::string& out, std::string_view name, const Labels& labels, const Counter& c) {
  AppendSample(out, name, "", LabelText(labels), FormatValue(c.Value()));
}

void AppendSeries(std::string& out, std::string_view name, const Labels& labels, const Gauge& g) {
  AppendSample(out, name, "", LabelText(labels), FormatValue(g.Value()));
}

// _bucket{...,le="b"} cumulative count per boundary and +Inf, then _sum, _count.
void AppendSeries(std::string& out, std::string_view name, const Labels& labels, const Histogram& h) {
  const std::string text = LabelText(labels);
  const std::string prefix = text.empty() ? "" : absl::StrCat(text, ",");
  const std::vector<uint64_t> cumulative = h.CumulativeCounts();
  const std::vector<double>& bounds = h.boundaries();
  for (size_t i = 0; i < cumulative.size(); ++i) {
    const std::string le = i < bounds.size() ? FormatValue(bounds[i]) : "+Inf";
    AppendSample(out, name, "_bucket", absl::StrCat(prefix, "le=\"", le, "\""), absl::StrCat(cumulative[i]));
  }
  AppendSample(out, name, "_sum", text, FormatValue(h.Sum()));
  AppendSample(out, name, "_count", text, absl::StrCat(cumulative.back()));
}

}  // namespace

Histogram::Histogram(std::vector<double> boundaries)
    : boundaries_(CheckedBoundaries(std::move(boundaries))),
      counts_(new std::atomic<uint64_t>[boundaries_.size() + 1]) {
  for (size_t i = 0; i <= boundaries_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) {
  // NaN compares false with every bound, so lower_bound would put it first.
  const size_t bucket =
      std::isnan(v)
          ? boundaries_.size()
          : static_cast<size_t>(std::lower_bound(boundaries_.begin(), boundaries_.end(), v) - boundaries_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(boundaries_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    out[i] = running;
  }
  return out;
}

uint64_t Histogram::Count() const { return CumulativeCounts().back(); }

bool IsValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, /*colon=*/true)) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, /*colon=*/false)) return false;
  }
  return true;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);  // shortest form that reads back exactly
  return std::string(buf, result.ptr);
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

template <typename T>
T& Family<T>::Add(const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = series_.find(labels);
  if (it != series_.end()) return it->second;
  for (const auto& [label, value] : labels) {
    if (!IsValidLabelName(label)) Die(absl::StrCat(name(), ": invalid label name \"", label, "\""));
    if (std::is_same_v<T, Histogram> && label == "le") Die(absl::StrCat(name(), ": a histogram label is named le"));
  }
  if constexpr (std::is_same_v<T, Histogram>) {
    return series_.try_emplace(labels, buckets()).first->second;
  } else {
    return series_.try_emplace(labels).first->second;
  }
}

template <typename T>
void Family<T>::Serialize(std::string& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (series_.empty()) return;
  out.append("# HELP ").append(name()).append(" ").append(EscapeHelp(help())).append("\n");
  out.append("# TYPE ").append(name()).append(" ").append(T::kType).append("\n");
  for (const auto& [labels, series] : series_) AppendSeries(out, name(), labels, series);
}

template <typename T>
Family<T>& Registry::Register(std::string name, std::string help, std::vector<double> buckets) {
  if (!IsValidMetricName(name)) Die(absl::StrCat("invalid metric name \"", name, "\""));
  if (std::is_same_v<T, Counter> && !name.ends_with("_total")) {
    Die(absl::StrCat("counter ", name, " must end in _total (what the text format exposes)"));
  }
  if (!std::is_same_v<T, Histogram> && !buckets.empty()) Die(absl::StrCat(name, ": buckets on a non-histogram"));
  if (std::is_same_v<T, Histogram>) buckets = CheckedBoundaries(std::move(buckets));

  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& family : families_) {
    if (family->name() != name) continue;
    auto* same = dynamic_cast<Family<T>*>(family.get());
    if (same == nullptr || same->help() != help || same->buckets() != buckets) {
      Die(absl::StrCat("metric ", name, " registered twice with a different type, help or buckets"));
    }
    return *same;
  }
  auto* family = new Family<T>(std::move(name), std::move(help), std::move(buckets));
  families_.emplace_back(family);
  return *family;
}

std::string Registry::Serialize() const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& family : families_) family->Serialize(out);
  return out;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;
template Family<Counter>& Registry::Register<Counter>(std::string, std::string, std::vector<double>);
template Family<Gauge>& Registry::Register<Gauge>(std::string, std::string, std::vector<double>);
template Family<Histogram>& Registry::Register<Histogram>(std::string, std::string, std::vector<double>);

}  // namespace gdnserve::metrics
