// The official openai SDK, unchanged, over HTTPS to infergate
// ($INFERGATE_URL, a certificate of a test CA given in NODE_EXTRA_CA_CERTS):
// one chat completion and one streamed. Prints one JSON object
// (test_tls.py checks it).
import OpenAI from "openai";

const openai = new OpenAI({ baseURL: process.env.INFERGATE_URL + "/v1", apiKey: "no-key",
                            maxRetries: 0 });
const out = {};
const r = await openai.chat.completions.create({
    model: "mock-model", messages: [{ role: "user", content: "hi" }] });
out.chat = { object: r.object, text: r.choices[0].message.content };
const stream = await openai.chat.completions.create({
    model: "mock-model", messages: [{ role: "user", content: "hi" }], stream: true });
let text = "", chunks = 0;
for await (const c of stream) {
    chunks++;
    text += (c.choices[0] && c.choices[0].delta.content) || "";
}
out.stream = { chunks, text };
console.log(JSON.stringify(out));
