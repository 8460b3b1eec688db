// A small Prometheus client with prometheus-cpp's shape (DESIGN.md 5): a
// Registry holds metric Families; a Family holds one Counter, Gauge or
// Histogram series per label set; Registry::Serialize writes the text
// exposition format 0.0.4.
//
//   metrics::Registry registry;
//   auto& family = metrics::BuildCounter().Name("x_total").Help("...").Register(registry);
//   metrics::Counter& c = family.Add({{"model_name", "m"}});  // keep the reference
//   c.Increment();                                             // lock-free
//   std::string body = registry.Serialize();                   // GET /metrics
//
// Cost. Increment / Set / Observe are lock-free: every value is a std::atomic
// (doubles through C++20 atomic fetch_add, a compare-and-swap loop), a
// histogram's buckets are atomic counters. A mutex is taken only by
// Family::Add (finding or creating a label set) and Register, and while
// serializing. So hot paths keep the references Add returns.
//
// Lifetime. Nothing is ever removed: the references from Register and Add stay
// valid as long as the Registry.
//
// Misuse that can only be a bug aborts at registration with a message, as
// prometheus-cpp throws: an invalid metric or label name, a counter whose
// name lacks `_total`, a name registered again with another type, help or
// buckets, unsorted buckets, a histogram label named `le`. Names are constants
// in this code base, so the first test run finds it. Label values are free
// text (escaped on output).
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace gdnserve::metrics {

// The Content-Type of Registry::Serialize's output.
inline constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

// Label name -> value; sorted, so every series prints its labels in one order.
using Labels = std::map<std::string, std::string>;

class Counter {
 public:
  static constexpr std::string_view kType = "counter";
  // Adds v. A counter only goes up: v < 0, NaN and infinities are ignored.
  void Increment(double v = 1.0) {
    if (v >= 0.0 && v <= std::numeric_limits<double>::max()) value_.fetch_add(v, std::memory_order_relaxed);
  }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  static constexpr std::string_view kType = "gauge";
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Increment(double v = 1.0) { value_.fetch_add(v, std::memory_order_relaxed); }
  void Decrement(double v = 1.0) { value_.fetch_sub(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  static constexpr std::string_view kType = "histogram";
  // boundaries: strictly increasing finite upper bounds ("le"); the +Inf
  // bucket is implicit (a trailing +Inf is dropped). Empty: only +Inf.
  explicit Histogram(std::vector<double> boundaries);

  // Counts v in the first bucket with v <= le (NaN: only in +Inf, as the Go
  // client does) and adds v to the sum. Lock-free.
  void Observe(double v);

  const std::vector<double>& boundaries() const { return boundaries_; }
  // Cumulative counts, boundaries().size() + 1 of them; the last (+Inf) is
  // the count. Read while others observe, the counts are each a recent value.
  std::vector<uint64_t> CumulativeCounts() const;
  uint64_t Count() const;
  double Sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> boundaries_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // per bucket (not cumulative), size + 1
  std::atomic<double> sum_{0.0};
};

// Name rules of the text format: metric [a-zA-Z_:][a-zA-Z0-9_:]*, label
// [a-zA-Z_][a-zA-Z0-9_]* not starting with "__" (reserved).
bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);

// Text-format pieces, exposed for tests.
std::string FormatValue(double v);                 // shortest round-trip; "+Inf", "-Inf", "NaN"
std::string EscapeHelp(std::string_view help);     // \ -> \\, newline -> \n
std::string EscapeLabelValue(std::string_view v);  // \ -> \\, " -> \", newline -> \n

class Registry;

namespace internal {
class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  // Appends "# HELP", "# TYPE" and one line per sample; nothing while the
  // family has no series.
  virtual void Serialize(std::string& out) const = 0;
  virtual std::string_view type() const = 0;
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<double>& buckets() const { return buckets_; }

 protected:
  FamilyBase(std::string name, std::string help, std::vector<double> buckets)
      : name_(std::move(name)), help_(std::move(help)), buckets_(std::move(buckets)) {}

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<double> buckets_;  // Histogram families only
};
}  // namespace internal

// One metric name and its series, one per label set.
template <typename T>
class Family final : public internal::FamilyBase {
 public:
  // The series with these labels, created at zero on first use; the same
  // reference for the same labels. Takes the family's mutex.
  T& Add(const Labels& labels);

  void Serialize(std::string& out) const override;
  std::string_view type() const override { return T::kType; }

 private:
  friend class Registry;
  Family(std::string name, std::string help, std::vector<double> buckets)
      : FamilyBase(std::move(name), std::move(help), std::move(buckets)) {}

  mutable std::mutex mu_;
  std::map<Labels, T> series_ ABSL_GUARDED_BY(mu_);  // map nodes never move: references stay valid
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registers a family, or returns the one already registered under this name
  // with the same type, help and buckets (so two model's metric sets can share
  // a registry); aborts on any other clash. Families print in registration
  // order. buckets: Histogram only (see Histogram's constructor).
  template <typename T>
  Family<T>& Register(std::string name, std::string help, std::vector<double> buckets = {});

  // Every family in text exposition format 0.0.4.
  std::string Serialize() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<internal::FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

// prometheus-cpp's builder: BuildHistogram().Name(n).Help(h).Buckets(b).Register(r).
template <typename T>
class Builder {
 public:
  Builder& Name(std::string name) {
    name_ = std::move(name);
    return *this;
  }
  Builder& Help(std::string help) {
    help_ = std::move(help);
    return *this;
  }
  Builder& Buckets(std::vector<double> buckets) requires std::is_same_v<T, Histogram> {
    buckets_ = std::move(buckets);
    return *this;
  }
  Family<T>& Register(Registry& registry) const { return registry.Register<T>(name_, help_, buckets_); }

 private:
  std::string name_;
  std::string help_;
  std::vector<double> buckets_;
};

inline Builder<Counter> BuildCounter() { return {}; }
inline Builder<Gauge> BuildGauge() { return {}; }
inline Builder<Histogram> BuildHistogram() { return {}; }

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;
extern template Family<Counter>& Registry::Register<Counter>(std::string, std::string, std::vector<double>);
extern template Family<Gauge>& Registry::Register<Gauge>(std::string, std::string, std::vector<double>);
extern template Family<Histogram>& Registry::Register<Histogram>(std::string, std::string, std::vector<double>);

}  // namespace gdnserve::metrics
