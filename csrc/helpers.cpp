// Sample-index builders for GPT-style datasets, called from megasci/data/helpers.py.
//
// A sample is seq_length + 1 consecutive tokens of the corpus read in document order (the
// extra token is the last label), running across document boundaries. Consecutive samples
// share one token. sample_idx[i] = (position in doc_idx, token offset) where sample i starts;
// sample i ends (inclusive) where sample i + 1 starts.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

template <typename Index>
py::array_t<Index> build_sample_idx(py::array_t<int32_t, py::array::c_style | py::array::forcecast> sizes,
                                    py::array_t<int64_t, py::array::c_style | py::array::forcecast> doc_idx,
                                    int64_t seq_length, int64_t num_samples) {
  if (seq_length <= 0) throw std::invalid_argument("seq_length must be positive");
  if (num_samples < 0) throw std::invalid_argument("num_samples must be non-negative");
  const auto sizes_v = sizes.template unchecked<1>();
  const auto docs_v = doc_idx.template unchecked<1>();
  const int64_t num_docs = docs_v.shape(0), num_sizes = sizes_v.shape(0);

  // Validate once up front so the hot loop needs no checks: ids in range, enough tokens.
  int64_t total_tokens = 0;
  for (int64_t i = 0; i < num_docs; ++i) {
    const int64_t d = docs_v(i);
    if (d < 0 || d >= num_sizes)
      throw std::out_of_range("doc_idx[" + std::to_string(i) + "] = " + std::to_string(d) +
                              " is not a document of " + std::to_string(num_sizes));
    if (sizes_v(d) < 0) throw std::invalid_argument("negative document size");
    total_tokens += sizes_v(d);
  }
  if (num_samples > 0 && total_tokens < num_samples * seq_length + 1)
    throw std::invalid_argument(std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
                                "+1 tokens need " + std::to_string(num_samples * seq_length + 1) +
                                " tokens, the document order holds " + std::to_string(total_tokens));
  if (num_docs > static_cast<int64_t>(std::numeric_limits<Index>::max()))
    throw std::overflow_error("doc_idx is too long for this index type; use the int64 variant");

  py::array_t<Index> result({num_samples + 1, static_cast<int64_t>(2)});
  auto out = result.template mutable_unchecked<2>();
  {
    py::gil_scoped_release release;
    // Sample s starts at global token s * seq_length of the documents laid end to end (each sample's
    // last token starts the next). One pass over the documents writes the starts that fall in each,
    // in order: the same output as walking sample by sample, without its per-sample branching.
    out(0, 0) = 0;
    out(0, 1) = 0;
    int64_t s = 1, doc_start = 0;
    for (int64_t doc_pos = 0; doc_pos < num_docs && s <= num_samples; ++doc_pos) {
      const int64_t doc_end = doc_start + sizes_v(docs_v(doc_pos));
      for (int64_t token = s * seq_length; s <= num_samples && token < doc_end; ++s, token += seq_length) {
        out(s, 0) = static_cast<Index>(doc_pos);
        out(s, 1) = static_cast<Index>(token - doc_start);
      }
      doc_start = doc_end;
    }
  }
  return result;
}

// Blending indices: which source, and which sample of that source, each global sample takes.
// Two rules (BlendRule): greedy (Megatron's) and fair (Tijdeman's), both deterministic.
//
// Megatron's greedy rule (megatron/core/datasets/helpers.cpp): sample i (0-based) goes to the
// source s with the largest weights[s] * max(i, 1) - count[s], ties to the lowest s. The
// multiplier is max(i, 1), not i + 1: samples 0 and 1 both use 1, so from sample 1 on each pick
// goes to the source furthest behind its share of the i samples already placed. Megatron lets a
// zero-weight source win an exact tie at error 0; here zero weights never compete, which is
// Megatron's sequence for the same blend with those sources left out. The Python references in
// tests/test_blending_index.py compute the very same double expressions, so results match bit
// for bit only if the compiler does not fuse the multiply and subtract into an FMA (which rounds
// once instead of twice); contraction is off here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

using SourceIndex = int16_t;
using StageIndex = int16_t;
constexpr int64_t kMaxSources = std::numeric_limits<SourceIndex>::max();
constexpr int64_t kMaxStages = std::numeric_limits<StageIndex>::max();

// Checks one row of weights and returns it normalised to sum 1 (summed left to right, as the
// reference does). `what` names the row in error messages.
static std::vector<double> normalised_weights(const double* weights, int64_t num_sources, const std::string& what) {
  double total = 0.0;
  for (int64_t s = 0; s < num_sources; ++s) {
    const double w = weights[s];
    const std::string name = what + "[" + std::to_string(s) + "]";
    if (std::isnan(w)) throw std::invalid_argument(name + " is NaN");
    if (std::isinf(w)) throw std::invalid_argument(name + " is infinite");
    if (w < 0) {
      char shown[32];
      std::snprintf(shown, sizeof shown, "%.17g", w);
      throw std::invalid_argument(name + " = " + shown + " is negative");
    }
    total += w;
  }
  if (total == 0) throw std::invalid_argument(what + " are all zero");
  if (!std::isfinite(total)) throw std::invalid_argument(what + " sum to infinity");
  std::vector<double> normalised(weights, weights + num_sources);
  for (double& w : normalised) w /= total;
  return normalised;
}

static void check_source_count(int64_t num_sources) {
  if (num_sources < 1) throw std::invalid_argument("weights must name at least one source");
  if (num_sources > kMaxSources)
    throw std::invalid_argument(std::to_string(num_sources) + " sources; at most " + std::to_string(kMaxSources) +
                                " fit the int16 source index");
}

// Runs the greedy rule for `length` samples with stage-local counters `stage_counts` (zeroed by
// the caller) and per-source global counters `global_counts`, writing from `source_out[0]` on.
// Only positive-weight sources compete (see above).
static void greedy_blend(const double* weights, int64_t num_sources, int64_t length, int64_t* stage_counts,
                         int64_t* global_counts, SourceIndex* source_out, int64_t* sample_out) {
  std::vector<int64_t> positive;
  for (int64_t s = 0; s < num_sources; ++s)
    if (weights[s] > 0) positive.push_back(s);
  const int64_t num_positive = static_cast<int64_t>(positive.size());
  for (int64_t j = 0; j < length; ++j) {
    const double multiplier = static_cast<double>(std::max<int64_t>(j, 1));
    int64_t best = positive[0];
    double best_error = weights[best] * multiplier - static_cast<double>(stage_counts[best]);
    for (int64_t k = 1; k < num_positive; ++k) {
      const int64_t s = positive[k];
      // Written as selects so the compiler need not branch on an unpredictable winner.
      const double error = weights[s] * multiplier - static_cast<double>(stage_counts[s]);
      const bool better = error > best_error;
      best_error = better ? error : best_error;
      best = better ? s : best;
    }
    ++stage_counts[best];
    source_out[j] = static_cast<SourceIndex>(best);
    sample_out[j] = global_counts[best]++;
  }
}

// Tijdeman's fair rule (the chairman assignment problem, R. Tijdeman 1980). With P >= 2 sources
// of positive weight and delta = 1 / (2 (P - 1)), sample j (n = j + 1, stage-local) goes, among
// the eligible sources (positive weight and weights[s] * n - count[s] >= delta), to the one with
// the earliest deadline (count[s] + 1 - delta) / weights[s], ties to the lowest s. This keeps
// |count[s] - weights[s] * n| <= 1 - delta at every prefix n for every source, whatever P.
// P = 1: every sample goes to the one positive-weight source.
// Floating point: eligibility is tested as error >= delta - kFairTolerance * (1 + weights[s] * n),
// so a source whose exact error is delta is not lost to rounding (a near-tie admitted this way
// overshoots the bound by at most the tolerance). Should no source be eligible after all (the
// theorem says one always is; the tests check the fallback is never taken), the sample goes to
// the largest error weights[s] * n - count[s], ties to the lowest s.
// A source's deadline only changes when it is picked, so it is kept and updated then; the
// value is the same double the reference computes afresh. The Python reference in
// tests/test_blending_index.py evaluates the very same expressions.
constexpr double kFairTolerance = 1e-12;

static void fair_blend(const double* weights, int64_t num_sources, int64_t length, int64_t* stage_counts,
                       int64_t* global_counts, SourceIndex* source_out, int64_t* sample_out) {
  std::vector<int64_t> positive;
  for (int64_t s = 0; s < num_sources; ++s)
    if (weights[s] > 0) positive.push_back(s);
  if (positive.size() == 1) {
    const int64_t only = positive[0];
    for (int64_t j = 0; j < length; ++j) {
      source_out[j] = static_cast<SourceIndex>(only);
      sample_out[j] = global_counts[only]++;
    }
    stage_counts[only] += length;
    return;
  }
  const int64_t num_positive = static_cast<int64_t>(positive.size());
  const double delta = 1.0 / (2.0 * static_cast<double>(num_positive - 1));
  // Compact arrays over the positive-weight sources only (zero weights are never eligible).
  std::vector<double> w(num_positive), deadline(num_positive);
  for (int64_t k = 0; k < num_positive; ++k) {
    w[k] = weights[positive[k]];
    deadline[k] = (static_cast<double>(stage_counts[positive[k]]) + 1.0 - delta) / w[k];
  }
  for (int64_t j = 0; j < length; ++j) {
    const double position = static_cast<double>(j + 1);
    int64_t best = -1;
    double best_deadline = std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < num_positive; ++k) {
      const double share = w[k] * position;
      const double error = share - static_cast<double>(stage_counts[positive[k]]);
      const bool better = error >= delta - kFairTolerance * (1.0 + share) && (best < 0 || deadline[k] < best_deadline);
      best_deadline = better ? deadline[k] : best_deadline;
      best = better ? k : best;
    }
    if (best < 0) {  // Rounding fallback (never taken in the tests): the largest error.
      double best_error = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < num_positive; ++k) {
        const double error = w[k] * position - static_cast<double>(stage_counts[positive[k]]);
        if (error > best_error) {
          best_error = error;
          best = k;
        }
      }
    }
    const int64_t s = positive[best];
    ++stage_counts[s];
    deadline[best] = (static_cast<double>(stage_counts[s]) + 1.0 - delta) / w[best];
    source_out[j] = static_cast<SourceIndex>(s);
    sample_out[j] = global_counts[s]++;
  }
}

enum class BlendRule : int { kGreedy = 0, kFair = 1 };

static BlendRule parse_rule(int rule) {
  if (rule != static_cast<int>(BlendRule::kGreedy) && rule != static_cast<int>(BlendRule::kFair))
    throw std::invalid_argument("rule must be 0 (greedy) or 1 (fair), got " + std::to_string(rule));
  return static_cast<BlendRule>(rule);
}

static void blend(BlendRule rule, const double* weights, int64_t num_sources, int64_t length, int64_t* stage_counts,
                  int64_t* global_counts, SourceIndex* source_out, int64_t* sample_out) {
  if (rule == BlendRule::kFair)
    fair_blend(weights, num_sources, length, stage_counts, global_counts, source_out, sample_out);
  else
    greedy_blend(weights, num_sources, length, stage_counts, global_counts, source_out, sample_out);
}

py::tuple build_blending_indices(py::array_t<double, py::array::c_style | py::array::forcecast> weights,
                                 int64_t num_samples, int rule_id) {
  const BlendRule rule = parse_rule(rule_id);
  if (weights.ndim() != 1) throw std::invalid_argument("weights must be one-dimensional");
  if (num_samples < 0) throw std::invalid_argument("num_samples must be non-negative");
  const int64_t num_sources = weights.shape(0);
  check_source_count(num_sources);
  const std::vector<double> normalised = normalised_weights(weights.data(), num_sources, "weights");

  py::array_t<SourceIndex> source_index(num_samples);
  py::array_t<int64_t> source_sample_index(num_samples);
  SourceIndex* source_out = source_index.mutable_data();
  int64_t* sample_out = source_sample_index.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<int64_t> counts(num_sources, 0), global_counts(num_sources, 0);
    blend(rule, normalised.data(), num_sources, num_samples, counts.data(), global_counts.data(), source_out,
          sample_out);
  }
  return py::make_tuple(source_index, source_sample_index);
}

py::tuple build_curriculum_blending_indices(
    py::array_t<int64_t, py::array::c_style | py::array::forcecast> stage_ends,
    py::array_t<double, py::array::c_style | py::array::forcecast> stage_weights, int rule_id) {
  const BlendRule rule = parse_rule(rule_id);
  if (stage_ends.ndim() != 1) throw std::invalid_argument("stage_ends must be one-dimensional");
  if (stage_weights.ndim() != 2) throw std::invalid_argument("stage_weights must be two-dimensional (stages, sources)");
  const int64_t num_stages = stage_ends.shape(0), num_sources = stage_weights.shape(1);
  if (num_stages < 1) throw std::invalid_argument("stage_ends must name at least one stage");
  if (num_stages > kMaxStages)
    throw std::invalid_argument(std::to_string(num_stages) + " stages; at most " + std::to_string(kMaxStages) +
                                " fit the int16 stage index");
  if (stage_weights.shape(0) != num_stages)
    throw std::invalid_argument("stage_weights has " + std::to_string(stage_weights.shape(0)) + " rows for " +
                                std::to_string(num_stages) + " stages");
  check_source_count(num_sources);
  const int64_t* ends = stage_ends.data();
  int64_t previous_end = 0;
  for (int64_t k = 0; k < num_stages; ++k) {
    if (ends[k] <= previous_end)
      throw std::invalid_argument("stage_ends must be strictly increasing from above 0 (every stage holds a sample); "
                                  "stage_ends[" + std::to_string(k) + "] = " + std::to_string(ends[k]));
    previous_end = ends[k];
  }
  std::vector<std::vector<double>> normalised;
  normalised.reserve(num_stages);
  for (int64_t k = 0; k < num_stages; ++k)
    normalised.push_back(normalised_weights(stage_weights.data(k, 0), num_sources,
                                            "stage_weights[" + std::to_string(k) + "]"));

  const int64_t num_samples = ends[num_stages - 1];
  py::array_t<SourceIndex> source_index(num_samples);
  py::array_t<int64_t> source_sample_index(num_samples);
  py::array_t<StageIndex> stage_index(num_samples);
  SourceIndex* source_out = source_index.mutable_data();
  int64_t* sample_out = source_sample_index.mutable_data();
  StageIndex* stage_out = stage_index.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<int64_t> stage_counts(num_sources), global_counts(num_sources, 0);
    int64_t start = 0;
    for (int64_t k = 0; k < num_stages; ++k) {
      std::fill(stage_counts.begin(), stage_counts.end(), 0);
      blend(rule, normalised[k].data(), num_sources, ends[k] - start, stage_counts.data(), global_counts.data(),
            source_out + start, sample_out + start);
      std::fill(stage_out + start, stage_out + ends[k], static_cast<StageIndex>(k));
      start = ends[k];
    }
  }
  return py::make_tuple(source_index, source_sample_index, stage_index);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "megasci C++ helpers: sample-index and blending-index builders";
  m.def("build_sample_idx_int32", &build_sample_idx<int32_t>, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_samples"),
        "Sample start (doc_idx position, offset) pairs as int32; (num_samples + 1, 2).");
  m.def("build_sample_idx_int64", &build_sample_idx<int64_t>, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_samples"),
        "Sample start (doc_idx position, offset) pairs as int64; (num_samples + 1, 2).");
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("num_samples"),
        py::arg("rule"),
        "(source_index int16, source_sample_index int64) for num_samples samples blended by weights; "
        "rule 0 = greedy (Megatron), 1 = fair (Tijdeman).");
  m.def("build_curriculum_blending_indices", &build_curriculum_blending_indices, py::arg("stage_ends"),
        py::arg("stage_weights"), py::arg("rule"),
        "(source_index int16, source_sample_index int64, stage_index int16): per-stage blending "
        "(rule 0 = greedy, 1 = fair), source sample counters running on across stages.");
}
