// GGUF metadata <-> JSON, for `nnpipe gguf-info --json` and the `dev-gguf-write` spec files.
// A metadata entry is {"key", "type", "value"}; an array entry adds "element_type" and its value is
// a JSON list whose nested arrays are {"element_type", "value"} objects, so the exact types (and
// the element type of empty arrays) survive. Non-finite floats are the strings "NaN", "Infinity"
// and "-Infinity" (JSON has no spelling for them).
#pragma once
#include <string>

#include "core/json.h"
#include "io/gguf.h"

namespace nnpipe {

ordered_json gguf_kv_to_json(const GgufKv& kv);
// `where` names the input in errors (kFormat). Integers must fit their type exactly.
GgufKv gguf_kv_from_json(const json& entry, const std::string& where);

}  // namespace nnpipe
