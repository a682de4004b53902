// The OpenAI request parser of `nnpipe serve` (src/server/openai_api.h): every field's types and
// ranges, the defaults of absent fields, the error JSON, the response and chunk bodies. The HTTP
// behaviour with the real openai client is tests/conformance/test_serve.py.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/json.h"
#include "server/openai_api.h"
#include "server/serve_options.h"

using namespace nnpipe;
using namespace nnpipe::server;

namespace {

CompletionRequest Chat(const std::string& body) {
  return parse_completion_request(body, Endpoint::kChat);
}
CompletionRequest Cmpl(const std::string& body) {
  return parse_completion_request(body, Endpoint::kCompletion);
}

// The ApiError a body raises: "status code param".
std::string Err(const std::string& body, Endpoint ep = Endpoint::kChat) {
  try {
    parse_completion_request(body, ep);
  } catch (const ApiError& e) {
    return std::to_string(e.status()) + " " + e.code() + " " + e.param();
  }
  return "<no error>";
}

const char* kMsg = R"("messages": [{"role": "user", "content": "hi"}])";

std::string With(const std::string& more) {
  return std::string("{") + kMsg + ", " + more + "}";
}

}  // namespace

TEST(OpenAiRequest, ChatMinimalTakesLlamaServerDefaults) {
  CompletionRequest r = Chat(std::string("{") + kMsg + "}");
  EXPECT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0]["role"], "user");
  EXPECT_EQ(r.messages[0]["content"], "hi");
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FALSE(r.seed_given);
  EXPECT_FALSE(r.stream);
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, RequestDefaults::kTemperature);
  EXPECT_EQ(r.gen.sampling.top_k, RequestDefaults::kTopK);
  EXPECT_FLOAT_EQ(r.gen.sampling.top_p, RequestDefaults::kTopP);
  EXPECT_FLOAT_EQ(r.gen.sampling.min_p, RequestDefaults::kMinP);
  EXPECT_TRUE(r.ignored_fields.empty());
}

TEST(OpenAiRequest, EveryFieldMapsToTheJob) {
  CompletionRequest r = Chat(With(
      R"("model": "m", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3,
         "min_p": 0.1, "seed": 42, "stop": ["a", "bc"], "presence_penalty": 0.5,
         "frequency_penalty": -0.5, "repeat_penalty": 1.1, "n": 1, "stream": true,
         "stream_options": {"include_usage": true}, "ignore_eos": true,
         "lora": [{"id": 0, "scale": 0.5}, {"name": "x"}])"));
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.gen.max_tokens, 7);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_EQ(r.gen.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.gen.sampling.top_p, 0.5f);
  EXPECT_EQ(r.gen.sampling.top_k, 3);
  EXPECT_FLOAT_EQ(r.gen.sampling.min_p, 0.1f);
  EXPECT_EQ(r.gen.sampling.seed, 42u);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.gen.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_FLOAT_EQ(r.gen.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.gen.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.gen.sampling.repeat_penalty, 1.1f);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.gen.ignore_eos);
  ASSERT_TRUE(r.lora.has_value());
  ASSERT_EQ(r.lora->size(), 2u);
  EXPECT_EQ(*(*r.lora)[0].id, 0);
  EXPECT_FLOAT_EQ((*r.lora)[0].scale, 0.5f);
  EXPECT_EQ(*(*r.lora)[1].name, "x");
  EXPECT_FLOAT_EQ((*r.lora)[1].scale, 1.0f);
}

TEST(OpenAiRequest, CompletionPromptForms) {
  EXPECT_EQ(Cmpl(R"({"prompt": "abc"})").prompt, "abc");
  EXPECT_EQ(Cmpl(R"({"prompt": ["abc"]})").prompt, "abc");
  EXPECT_EQ(*Cmpl(R"({"prompt": [1, 2, 3]})").prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(Err(R"({"prompt": ["a", "b"]})", Endpoint::kCompletion),
            "400 unsupported_value prompt");
  EXPECT_EQ(Err(R"({"prompt": [1, -2]})", Endpoint::kCompletion), "400 invalid_value prompt[1]");
  EXPECT_EQ(Err(R"({"prompt": 5})", Endpoint::kCompletion), "400 invalid_type prompt");
  EXPECT_EQ(Err(R"({"prompt": ""})", Endpoint::kCompletion), "400 invalid_value prompt");
  EXPECT_EQ(Err(R"({})", Endpoint::kCompletion), "400 missing prompt");
  // A chat body on /v1/completions: messages is an unknown field there.
  EXPECT_EQ(Err(std::string("{") + kMsg + "}", Endpoint::kCompletion), "400 missing prompt");
}

TEST(OpenAiRequest, MessageContentForms) {
  CompletionRequest r = Chat(
      R"({"messages": [{"role": "system", "content": null},
                       {"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}]}]})");
  EXPECT_EQ(r.messages[0]["content"], "");
  EXPECT_EQ(r.messages[1]["content"], "ab");
  EXPECT_EQ(Err(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})"),
            "400 unsupported_value messages[0].content[0]");
  EXPECT_EQ(Err(R"({"messages": [{"content": "x"}]})"), "400 missing messages[0].role");
  EXPECT_EQ(Err(R"({"messages": [{"role": 1, "content": "x"}]})"),
            "400 invalid_type messages[0].role");
  EXPECT_EQ(Err(R"({"messages": []})"), "400 invalid_value messages");
  EXPECT_EQ(Err(R"({"messages": "hi"})"), "400 invalid_type messages");
  EXPECT_EQ(Err(R"({"messages": ["hi"]})"), "400 invalid_type messages[0]");
  EXPECT_EQ(Err(R"({"model": "x"})"), "400 missing messages");
}

TEST(OpenAiRequest, MalformedBodies) {
  EXPECT_EQ(Err("{"), "400 invalid_json ");
  EXPECT_EQ(Err(""), "400 invalid_json ");
  EXPECT_EQ(Err("[1]"), "400 invalid_json ");
  EXPECT_EQ(Err("\"x\""), "400 invalid_json ");
  EXPECT_EQ(Err("{\"messages\": \"\xff\"}"), "400 invalid_json ");
}

TEST(OpenAiRequest, WrongTypes) {
  EXPECT_EQ(Err(With(R"("model": 3)")), "400 invalid_type model");
  EXPECT_EQ(Err(With(R"("max_tokens": "8")")), "400 invalid_type max_tokens");
  EXPECT_EQ(Err(With(R"("max_tokens": 2.5)")), "400 invalid_type max_tokens");
  EXPECT_EQ(Err(With(R"("temperature": "hot")")), "400 invalid_type temperature");
  EXPECT_EQ(Err(With(R"("top_k": 1.5)")), "400 invalid_type top_k");
  EXPECT_EQ(Err(With(R"("stream": 1)")), "400 invalid_type stream");
  EXPECT_EQ(Err(With(R"("stop": 1)")), "400 invalid_type stop");
  EXPECT_EQ(Err(With(R"("stop": [1])")), "400 invalid_type stop[0]");
  EXPECT_EQ(Err(With(R"("stream_options": true)")), "400 invalid_type stream_options");
  EXPECT_EQ(Err(With(R"("stream_options": {"include_usage": "yes"})")),
            "400 invalid_type stream_options.include_usage");
  EXPECT_EQ(Err(With(R"("lora": {"id": 0})")), "400 invalid_type lora");
  EXPECT_EQ(Err(With(R"("lora": [{"id": "0"}])")), "400 invalid_type lora[0].id");
  EXPECT_EQ(Err(With(R"("seed": "1")")), "400 invalid_type seed");
  // An integral float is an integer (JavaScript clients send 8.0).
  EXPECT_EQ(Chat(With(R"("max_tokens": 8.0)")).gen.max_tokens, 8);
}

TEST(OpenAiRequest, ValuesOutOfRange) {
  EXPECT_EQ(Err(With(R"("max_tokens": -1)")), "400 invalid_value max_tokens");
  EXPECT_EQ(Err(With(R"("temperature": -0.1)")), "400 invalid_value temperature");
  EXPECT_EQ(Err(With(R"("temperature": 1e9)")), "400 invalid_value temperature");
  EXPECT_EQ(Err(With(R"("top_p": 1.5)")), "400 invalid_value top_p");
  EXPECT_EQ(Err(With(R"("min_p": -1)")), "400 invalid_value min_p");
  EXPECT_EQ(Err(With(R"("top_k": -1)")), "400 invalid_value top_k");
  EXPECT_EQ(Err(With(R"("repeat_penalty": 0)")), "400 invalid_value repeat_penalty");
  EXPECT_EQ(Err(With(R"("presence_penalty": 1000)")), "400 invalid_value presence_penalty");
  EXPECT_EQ(Err(With(R"("n": 2)")), "400 unsupported_value n");
  EXPECT_EQ(Err(With(R"("n": 0)")), "400 invalid_value n");
  EXPECT_EQ(Err(With(R"("stop": "")")), "400 invalid_value stop");
  EXPECT_EQ(
      Err(With(R"("stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"])")),
      "400 invalid_value stop");
  EXPECT_EQ(Err(With(R"("lora": [{"id": 0, "name": "a"}])")), "400 invalid_value lora[0]");
  EXPECT_EQ(Err(With(R"("lora": [{"scale": 1}])")), "400 invalid_value lora[0]");
  EXPECT_EQ(Err(With(R"("lora": [{"id": 0, "scale": 1e5}])")), "400 invalid_value lora[0].scale");
  EXPECT_EQ(Err(With(R"("lora": [{"id": -1}])")), "400 invalid_value lora[0].id");
  EXPECT_EQ(Err(With(R"("seed": -2)")), "400 invalid_value seed");
  EXPECT_EQ(Err(With(R"("logprobs": true)")), "400 unsupported_value logprobs");
}

TEST(OpenAiRequest, NullsAndSeedsAndUnknownFields) {
  CompletionRequest r = Chat(With(R"("max_tokens": null, "temperature": null, "stop": null,
                                     "seed": -1, "tools": [], "foo": 1, "user": "u")"));
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, RequestDefaults::kTemperature);
  EXPECT_TRUE(r.gen.stop.empty());
  EXPECT_FALSE(r.seed_given);  // -1: random, as llama-server
  EXPECT_EQ(r.ignored_fields, (std::vector<std::string>{"foo", "tools"}));
  EXPECT_EQ(Chat(With(R"("seed": 18446744073709551615)")).gen.sampling.seed,
            18446744073709551615ull);
  EXPECT_EQ(Chat(With(R"("stop": "x")")).gen.stop, (std::vector<std::string>{"x"}));
  // include_usage only means something for a stream.
  EXPECT_FALSE(Chat(With(R"("stream_options": {"include_usage": true})")).include_usage);
}

TEST(OpenAiRequest, AdapterManagementBodies) {
  LoraAdapterRequest r =
      parse_lora_adapter_request(R"({"lora_name": "a", "lora_path": "/x"})", true);
  EXPECT_EQ(r.name, "a");
  EXPECT_EQ(r.path, "/x");
  EXPECT_EQ(parse_lora_adapter_request(R"({"lora_name": "a"})", false).path, "");
  EXPECT_THROW(parse_lora_adapter_request(R"({"lora_name": "a"})", true), ApiError);
  EXPECT_THROW(parse_lora_adapter_request(R"({"lora_path": "/x"})", true), ApiError);
  EXPECT_THROW(parse_lora_adapter_request(R"({"lora_name": 1, "lora_path": "/x"})", true),
               ApiError);
  auto s = parse_lora_scales(R"([{"id": 1, "scale": 0.5}])");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].first, 1);
  EXPECT_FLOAT_EQ(s[0].second, 0.5f);
  EXPECT_THROW(parse_lora_scales(R"({"id": 1})"), ApiError);
  EXPECT_THROW(parse_lora_scales(R"([{"id": 1}])"), ApiError);
}

TEST(OpenAiResponse, ErrorBodyHasOpenAiFields) {
  const json e = parse_json(error_body(429, "queue_full", "busy"), "e");
  EXPECT_EQ(e["error"]["message"], "busy");
  EXPECT_EQ(e["error"]["type"], "rate_limit_error");
  EXPECT_EQ(e["error"]["code"], "queue_full");
  EXPECT_TRUE(e["error"]["param"].is_null());
  EXPECT_EQ(parse_json(error_body(400, "x", "m", "top_p"), "e")["error"]["param"], "top_p");
  EXPECT_STREQ(error_type(401), "authentication_error");
  EXPECT_STREQ(error_type(404), "not_found_error");
  EXPECT_STREQ(error_type(500), "server_error");
}

TEST(OpenAiResponse, BodiesAndChunks) {
  ResponseMeta m = new_response_meta(Endpoint::kChat, "base");
  EXPECT_EQ(m.id.rfind("chatcmpl-", 0), 0u);
  EXPECT_NE(m.id, new_response_meta(Endpoint::kChat, "base").id);
  const json c = parse_json(completion_body(Endpoint::kChat, m, "hey", "stop", {3, 2, 1}), "c");
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["model"], "base");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "hey");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(c["usage"]["completion_tokens"], 2);
  EXPECT_EQ(c["usage"]["total_tokens"], 5);
  EXPECT_EQ(c["usage"]["prompt_tokens_details"]["cached_tokens"], 1);

  const json k = parse_json(chunk_body(Endpoint::kChat, m, "he", true, "", true), "k");
  EXPECT_EQ(k["object"], "chat.completion.chunk");
  EXPECT_EQ(k["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(k["choices"][0]["delta"]["content"], "he");
  EXPECT_TRUE(k["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(k.contains("usage") && k["usage"].is_null());
  const json last = parse_json(chunk_body(Endpoint::kChat, m, "", false, "length", false), "l");
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(last["choices"][0]["delta"].contains("content"));
  EXPECT_FALSE(last.contains("usage"));
  const json u = parse_json(usage_chunk_body(Endpoint::kChat, m, {4, 5, 0}), "u");
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 9);

  ResponseMeta t = new_response_meta(Endpoint::kCompletion, "base");
  EXPECT_EQ(t.id.rfind("cmpl-", 0), 0u);
  const json tc = parse_json(completion_body(Endpoint::kCompletion, t, "x", "length", {}), "t");
  EXPECT_EQ(tc["object"], "text_completion");
  EXPECT_EQ(tc["choices"][0]["text"], "x");
  const json tk = parse_json(chunk_body(Endpoint::kCompletion, t, "y", true, "", false), "tk");
  EXPECT_EQ(tk["object"], "text_completion");
  EXPECT_EQ(tk["choices"][0]["text"], "y");
}

TEST(OpenAiApiKey, ConstantTimeCompare) {
  EXPECT_TRUE(keys_equal("secret", "secret"));
  EXPECT_FALSE(keys_equal("secreT", "secret"));
  EXPECT_FALSE(keys_equal("secret2", "secret"));
  EXPECT_FALSE(keys_equal("secre", "secret"));
  EXPECT_FALSE(keys_equal("", "secret"));
  EXPECT_FALSE(keys_equal(std::string_view("secret\0", 7), "secret"));
}

TEST(ServeOptions, ConfigFileKeysAndFlagsWin) {
  ServeOptions o;
  apply_serve_config(o,
                     parse_json(R"({"model": "m.gguf", "port": 9000, "api_key": "k",
                                    "lora": ["a=x.gguf"], "parallel": 8, "runtime-lora": false})",
                                "cfg"),
                     {"port"}, "cfg");
  EXPECT_EQ(o.model, "m.gguf");
  EXPECT_EQ(o.port, 8080);  // given as a flag
  EXPECT_EQ(o.api_key, "k");
  EXPECT_EQ(o.loras, (std::vector<std::string>{"a=x.gguf"}));
  EXPECT_EQ(o.parallel, 8);
  EXPECT_FALSE(o.runtime_lora);
  EXPECT_EQ(o.host, "127.0.0.1");
  EXPECT_EQ(o.http_thread_count(), 8 + 64 + 4);
  EXPECT_THROW(apply_serve_config(o, parse_json(R"({"prot": 1})", "c"), {}, "c"), Error);
  EXPECT_THROW(apply_serve_config(o, parse_json(R"({"port": "1"})", "c"), {}, "c"), Error);
  EXPECT_THROW(apply_serve_config(o, parse_json(R"({"port": 70000})", "c"), {}, "c"), Error);
  EXPECT_THROW(apply_serve_config(o, parse_json(R"([])", "c"), {}, "c"), Error);
}
