// Sample-index builders for GPT-style datasets, called from megasci/data/helpers.py.
//
// A sample is seq_length + 1 consecutive tokens of the corpus read in document order (the
// extra token is the last label), running across document boundaries. Consecutive samples
// share one token. sample_idx[i] = (position in doc_idx, token offset) where sample i starts;
// sample i ends (inclusive) where sample i + 1 starts.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

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
    int64_t doc_pos = 0, offset = 0;
    out(0, 0) = 0;
    out(0, 1) = 0;
    for (int64_t s = 1; s <= num_samples; ++s) {
      int64_t remaining = seq_length + 1;
      while (remaining != 0) {
        const int64_t left_in_doc = sizes_v(docs_v(doc_pos)) - offset;
        remaining -= left_in_doc;
        if (remaining <= 0) {
          // The sample ends inside this document; its last token starts the next sample.
          offset += remaining + left_in_doc - 1;
          remaining = 0;
        } else {
          ++doc_pos;
          offset = 0;
        }
      }
      out(s, 0) = static_cast<Index>(doc_pos);
      out(s, 1) = static_cast<Index>(offset);
    }
  }
  return result;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "megasci C++ helpers: sample-index builders";
  m.def("build_sample_idx_int32", &build_sample_idx<int32_t>, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_samples"),
        "Sample start (doc_idx position, offset) pairs as int32; (num_samples + 1, 2).");
  m.def("build_sample_idx_int64", &build_sample_idx<int64_t>, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_samples"),
        "Sample start (doc_idx position, offset) pairs as int64; (num_samples + 1, 2).");
}
