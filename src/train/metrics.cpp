#include "train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe {
namespace {

double number_field(const json& j, const char* key, const std::string& origin) {
  const json& v = require_field(j, key, origin);
  // NaN/inf losses are written by nlohmann as null; read them back as NaN rather than failing so
  // a diverged run's log stays readable.
  if (v.is_null()) return std::nan("");
  if (!v.is_number())
    fail(ErrorCode::kFormat, "{}: field \"{}\" must be a number, got {}", origin, key,
         json_type_name(v));
  return v.get<double>();
}

int64_t integer_field(const json& j, const char* key, const std::string& origin) {
  const json& v = require_field(j, key, origin);
  if (!v.is_number_integer())
    fail(ErrorCode::kFormat, "{}: field \"{}\" must be an integer, got {}", origin, key,
         json_type_name(v));
  return v.get<int64_t>();
}

// Text for SVG content and attributes.
std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// "Nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
double nice_step(double span, int target) {
  if (!(span > 0)) return 1.0;
  double raw = span / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double norm = raw / mag;
  double nice = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  return nice * mag;
}

std::string tick_label(double v, double step) {
  // Enough decimals to tell adjacent ticks apart.
  int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  if (std::fabs(v) < step * 1e-6) v = 0;  // avoid "-0.00"
  return fmt::format("{:.{}f}", v, std::clamp(decimals, 0, 8));
}

}  // namespace

json MetricsRow::to_json() const {
  return json{{"step", step},     {"epoch", epoch},         {"loss", loss},
              {"lr", lr},         {"grad_norm", grad_norm}, {"tokens_per_s", tokens_per_s},
              {"tokens", tokens}, {"elapsed_s", elapsed_s}};
}

MetricsRow MetricsRow::from_json(const json& j, const std::string& origin) {
  MetricsRow r;
  r.step = integer_field(j, "step", origin);
  r.epoch = number_field(j, "epoch", origin);
  r.loss = number_field(j, "loss", origin);
  r.lr = number_field(j, "lr", origin);
  r.grad_norm = number_field(j, "grad_norm", origin);
  r.tokens_per_s = number_field(j, "tokens_per_s", origin);
  r.tokens = integer_field(j, "tokens", origin);
  r.elapsed_s = number_field(j, "elapsed_s", origin);
  return r;
}

MetricsLog::MetricsLog(const fs::path& path, bool append, int64_t keep_until_step) : path_(path) {
  if (append && fs::exists(path)) {
    // A run killed mid-write can leave a last line without its newline: drop it, or the next row
    // would be glued onto it. Kept lines are copied verbatim; the rewrite is atomic so a crash
    // here cannot lose them.
    std::string text = read_file(path);
    std::string kept;
    bool changed = false;
    size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      ++line_no;
      if (end == std::string::npos) {
        log::warn("{}: dropping an incomplete last line {}", path.string(), line_no);
        changed = true;
        break;
      }
      std::string_view line(text.data() + pos, end - pos);
      pos = end + 1;
      if (keep_until_step >= 0 && line.find_first_not_of(" \t\r") != std::string_view::npos) {
        std::string origin = fmt::format("{}: line {}", path.string(), line_no);
        MetricsRow row = MetricsRow::from_json(parse_json(line, path.string(), line_no), origin);
        if (row.step > keep_until_step) {
          changed = true;
          continue;
        }
      }
      kept.append(line);
      kept += '\n';
    }
    if (changed) write_file_atomic(path, kept);
  }
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!out_)
    fail(ErrorCode::kIo, "{}: cannot open for writing: {}", path.string(), std::strerror(errno));
}

void MetricsLog::write(const MetricsRow& row) {
  out_ << row.to_json().dump() << '\n';
  out_.flush();  // a killed run keeps every finished step
  if (!out_) fail(ErrorCode::kIo, "{}: write failed", path_.string());
}

std::vector<MetricsRow> MetricsLog::read(const fs::path& path) {
  std::string text = read_file(path);
  std::vector<MetricsRow> rows;
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    std::string origin = fmt::format("{}: line {}", path.string(), line_no);
    rows.push_back(MetricsRow::from_json(parse_json(line, path.string(), line_no), origin));
  }
  return rows;
}

void write_loss_svg(const fs::path& path, const std::vector<MetricsRow>& rows,
                    const std::string& title) {
  constexpr double kW = 720, kH = 420;
  constexpr double kLeft = 70, kRight = 20, kTop = 50, kBottom = 55;
  constexpr double kPlotW = kW - kLeft - kRight, kPlotH = kH - kTop - kBottom;

  std::string svg = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">{3}</text>\n",
      kW, kH, kW / 2, xml_escape(title));

  // Only finite points can be drawn; a NaN loss would make the whole polyline invalid.
  std::vector<const MetricsRow*> pts;
  for (const MetricsRow& r : rows)
    if (std::isfinite(r.loss)) pts.push_back(&r);

  if (pts.empty()) {
    svg += fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n"
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">no data</text>\n</svg>\n",
        kLeft, kTop, kPlotW, kPlotH, kLeft + kPlotW / 2, kTop + kPlotH / 2);
    write_file_atomic(path, svg);
    return;
  }

  double x_min = static_cast<double>(pts.front()->step), x_max = x_min;
  double y_min = pts.front()->loss, y_max = y_min;
  for (const MetricsRow* r : pts) {
    x_min = std::min(x_min, static_cast<double>(r->step));
    x_max = std::max(x_max, static_cast<double>(r->step));
    y_min = std::min(y_min, r->loss);
    y_max = std::max(y_max, r->loss);
  }
  // A single point or a flat line still needs a non-empty range.
  if (x_max <= x_min) x_max = x_min + 1;
  if (y_max <= y_min) {
    double pad = std::max(std::fabs(y_min) * 0.05, 1e-3);
    y_min -= pad;
    y_max += pad;
  }
  double x_step = std::max(1.0, nice_step(x_max - x_min, 8));
  // Start the x axis on a tick (step 0 for a fresh run) so its left end is labelled.
  x_min = std::floor(x_min / x_step) * x_step;
  double y_step = nice_step(y_max - y_min, 6);
  // Round the y axis out to whole ticks so the curve never touches the frame.
  y_min = std::floor(y_min / y_step) * y_step;
  y_max = std::ceil(y_max / y_step) * y_step;
  if (y_max <= y_min) y_max = y_min + y_step;

  auto sx = [&](double x) { return kLeft + (x - x_min) / (x_max - x_min) * kPlotW; };
  auto sy = [&](double y) { return kTop + (y_max - y) / (y_max - y_min) * kPlotH; };

  // Grid lines and tick labels.
  for (double y = y_min; y <= y_max + y_step * 1e-6; y += y_step) {
    svg += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e5e5e5\"/>\n"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
        kLeft, sy(y), kLeft + kPlotW, sy(y), kLeft - 6, sy(y) + 4, tick_label(y, y_step));
  }
  for (double x = std::ceil(x_min / x_step) * x_step; x <= x_max + 1e-9; x += x_step) {
    svg += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e5e5e5\"/>\n"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
        sx(x), kTop, sx(x), kTop + kPlotH, sx(x), kTop + kPlotH + 18, tick_label(x, x_step));
  }
  // Axes and axis titles.
  svg += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n"
      "<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
      "{})\">loss</text>\n",
      kLeft, kTop, kPlotW, kPlotH, kLeft + kPlotW / 2, kH - 12, kTop + kPlotH / 2,
      kTop + kPlotH / 2);

  std::string points;
  for (const MetricsRow* r : pts) {
    if (!points.empty()) points += ' ';
    points += fmt::format("{:.2f},{:.2f}", sx(static_cast<double>(r->step)), sy(r->loss));
  }
  svg += fmt::format(
      "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n", points);

  // Legend with the last loss, top right inside the plot.
  const MetricsRow& last = *pts.back();
  std::string legend = fmt::format("loss (last {:.4f} at step {})", last.loss, last.step);
  double lx = kLeft + kPlotW - 250;
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"240\" height=\"22\" fill=\"white\" "
      "fill-opacity=\"0.85\" stroke=\"#999\"/>\n"
      "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#1f77b4\" "
      "stroke-width=\"2\"/>\n"
      "<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n</svg>\n",
      lx, kTop + 8, lx + 8, kTop + 19, lx + 28, kTop + 19, lx + 34, kTop + 23, xml_escape(legend));
  write_file_atomic(path, svg);
}

}  // namespace nnpipe
