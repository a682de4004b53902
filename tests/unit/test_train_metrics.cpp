#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "core/error.h"
#include "core/file.h"
#include "train/metrics.h"
#include "train/progress.h"

using namespace nnpipe;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / fmt::format("nnpipe_metrics_{}_{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

MetricsRow row(int64_t step, double loss) {
  MetricsRow r;
  r.step = step;
  r.epoch = static_cast<double>(step) / 10.0;
  r.loss = loss;
  r.lr = 1e-4;
  r.grad_norm = 0.5 * static_cast<double>(step);
  r.tokens_per_s = 1234.5;
  r.tokens = 256 * step;
  r.elapsed_s = 0.25 * static_cast<double>(step);
  return r;
}

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

}  // namespace

TEST(ProgressBar, FormatEta) {
  EXPECT_EQ(ProgressBar::format_eta(0), "0s");
  EXPECT_EQ(ProgressBar::format_eta(12.4), "12s");
  EXPECT_EQ(ProgressBar::format_eta(59.4), "59s");
  EXPECT_EQ(ProgressBar::format_eta(184), "3m04s");
  EXPECT_EQ(ProgressBar::format_eta(3599), "59m59s");
  EXPECT_EQ(ProgressBar::format_eta(3720), "1h02m");
  EXPECT_EQ(ProgressBar::format_eta(-1), "?");
}

TEST(ProgressBar, DisabledWritesNothing) {
  testing::internal::CaptureStderr();
  {
    ProgressBar bar("train", 0, 10, false);
    bar.update(1, 0.1, 2.0, 1e-4, 100);
    bar.finish();
    bar.finish();
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(ProgressBar, PlainOutputWhenNotATty) {
  // gtest's capture redirects stderr to a file, so this exercises the non-TTY path.
  testing::internal::CaptureStderr();
  {
    ProgressBar bar("train", 5, 10, true);
    for (int64_t s = 6; s <= 10; ++s) bar.update(s, 0.5, 1.25, 2e-5, 321);
  }  // destructor finishes
  std::string out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(count(out, "\n"), 1u) << out;  // throttled to one final line
  EXPECT_NE(out.find("10/10"), std::string::npos) << out;
  EXPECT_NE(out.find("loss 1.2500"), std::string::npos) << out;
  EXPECT_EQ(out.find('\r'), std::string::npos) << out;
}

TEST(Metrics, JsonlRoundTrip) {
  fs::path dir = temp_dir("roundtrip");
  fs::path p = dir / "metrics.jsonl";
  {
    MetricsLog log(p, false);
    for (int64_t s = 1; s <= 3; ++s) log.write(row(s, 3.0 - 0.5 * static_cast<double>(s)));
  }
  json j = row(2, 1.0).to_json();
  EXPECT_EQ(j.size(), 8u);
  for (const char* k :
       {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed_s"})
    EXPECT_TRUE(j.contains(k)) << k;

  auto rows = MetricsLog::read(p);
  ASSERT_EQ(rows.size(), 3u);
  for (int64_t s = 1; s <= 3; ++s) {
    MetricsRow want = row(s, 3.0 - 0.5 * static_cast<double>(s));
    const MetricsRow& got = rows[static_cast<size_t>(s - 1)];
    EXPECT_EQ(got.step, want.step);
    EXPECT_DOUBLE_EQ(got.epoch, want.epoch);
    EXPECT_DOUBLE_EQ(got.loss, want.loss);
    EXPECT_DOUBLE_EQ(got.lr, want.lr);
    EXPECT_DOUBLE_EQ(got.grad_norm, want.grad_norm);
    EXPECT_DOUBLE_EQ(got.tokens_per_s, want.tokens_per_s);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_DOUBLE_EQ(got.elapsed_s, want.elapsed_s);
  }
  // append=false truncates.
  { MetricsLog log(p, false); }
  EXPECT_TRUE(MetricsLog::read(p).empty());
  fs::remove_all(dir);
}

TEST(Metrics, ResumeDropsTail) {
  fs::path dir = temp_dir("resume");
  fs::path p = dir / "metrics.jsonl";
  {
    MetricsLog log(p, false);
    for (int64_t s = 1; s <= 5; ++s) log.write(row(s, 1.0));
  }
  {
    MetricsLog log(p, true, 3);  // resume from the step-3 checkpoint
    log.write(row(4, 0.5));
  }
  auto rows = MetricsLog::read(p);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[2].step, 3);
  EXPECT_EQ(rows[3].step, 4);
  EXPECT_DOUBLE_EQ(rows[3].loss, 0.5);
  {
    MetricsLog log(p, true);  // plain append keeps everything
    log.write(row(5, 0.25));
  }
  EXPECT_EQ(MetricsLog::read(p).size(), 5u);
  // A run killed mid-row leaves a last line without newline; appending drops it.
  {
    std::string text = read_file(p);
    write_file_atomic(p, text + "{\"step\": 6, \"epo");
  }
  {
    MetricsLog log(p, true, 5);
    log.write(row(6, 0.125));
  }
  rows = MetricsLog::read(p);
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_DOUBLE_EQ(rows[5].loss, 0.125);
  fs::remove_all(dir);
}

TEST(Metrics, MalformedLineNamesFileAndLine) {
  fs::path dir = temp_dir("bad");
  fs::path p = dir / "metrics.jsonl";
  std::string good = row(1, 1.0).to_json().dump();
  write_file_atomic(p, good + "\n" + "{\"step\": 2, \"loss\": \n");
  try {
    MetricsLog::read(p);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    std::string msg = e.what();
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  }
  // Valid JSON but a missing field also names the line.
  write_file_atomic(p, good + "\n\n{\"step\": 3}\n");
  try {
    MetricsLog::read(p);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("epoch"), std::string::npos) << msg;
  }
  fs::remove_all(dir);
}

TEST(Metrics, LossSvg) {
  fs::path dir = temp_dir("svg");
  std::vector<MetricsRow> rows;
  for (int64_t s = 1; s <= 20; ++s) rows.push_back(row(s, 2.0 / static_cast<double>(s) + 0.1));
  write_loss_svg(dir / "loss.svg", rows, "LoRA <r16> & loss");
  std::string svg = read_file(dir / "loss.svg");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("LoRA &lt;r16&gt; &amp; loss"), std::string::npos);  // escaped title
  EXPECT_NE(svg.find("0.2000"), std::string::npos);                       // last loss in legend
  // Balanced-ish XML: every opened element is closed or self-closed.
  EXPECT_EQ(count(svg, "<text"), count(svg, "</text>"));
  EXPECT_EQ(count(svg, "<svg"), count(svg, "</svg>"));
  // The polyline's points="..." (no std::regex: GCC 12 warns inside it under ASan).
  const size_t poly = svg.find("<polyline");
  ASSERT_NE(poly, std::string::npos);
  const size_t at = svg.find("points=\"", poly);
  ASSERT_NE(at, std::string::npos);
  ASSERT_LT(at, svg.find('>', poly));
  const size_t begin = at + 8, end = svg.find('"', begin);
  ASSERT_NE(end, std::string::npos);
  std::string pts = svg.substr(begin, end - begin);
  EXPECT_EQ(count(pts, ","), rows.size());
  EXPECT_EQ(count(pts, " ") + 1, rows.size());

  write_loss_svg(dir / "empty.svg", {}, "empty");
  std::string empty = read_file(dir / "empty.svg");
  EXPECT_NE(empty.find("no data"), std::string::npos);
  EXPECT_EQ(empty.find("<polyline"), std::string::npos);
  fs::remove_all(dir);
}
