// The official SDKs, unchanged, pointed at infergate ($INFERGATE_URL).
// Prints one JSON object with what each call returned; test_api_sdk.py
// checks it against the mocks behind the gateway.
import OpenAI, { toFile } from "openai";
import Anthropic from "@anthropic-ai/sdk";

const base = process.env.INFERGATE_URL;
const key = process.env.INFERGATE_CLIENT_KEY || "no-key";
const openai = new OpenAI({ baseURL: base + "/v1", apiKey: key, maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: base, apiKey: key, maxRetries: 0 });
const out = {};

const r1 = await openai.responses.create({ model: "mock-model", input: "hello" });
out.create = { id: r1.id, text: r1.output_text, usage: r1.usage };
const events = [];
const stream = await openai.responses.create({ model: "mock-model", input: "hi", stream: true });
for await (const ev of stream) events.push(ev.type);
out.stream = events;
const got = await openai.responses.retrieve(r1.id);
out.retrieve = { id: got.id, text: got.output_text };
const r2 = await openai.responses.create({ model: "mock-model", input: "again",
                                           previous_response_id: r1.id });
out.turn2 = { id: r2.id, text: r2.output_text };
const tr = await openai.audio.transcriptions.create({
    file: await toFile(Buffer.from("RIFF....WAVEfmt "), "a.wav"), model: "whisper-1" });
out.transcription = tr.text;
const speech = await openai.audio.speech.create({ model: "tts-1", voice: "alloy", input: "hi" });
const audio = Buffer.from(await speech.arrayBuffer());
out.speech = { bytes: audio.length, head: audio.subarray(0, 3).toString() };
const img = await openai.images.generate({ model: "img-1", prompt: "a cat" });
out.image = img.data[0].b64_json;
const mod = await openai.moderations.create({ model: "omni-moderation-latest", input: "x" });
out.moderation = mod.results[0].flagged;

const msg = await anthropic.messages.create({
    model: "claude-x", max_tokens: 16, messages: [{ role: "user", content: "hi" }] });
out.message = { text: msg.content[0].text, usage: msg.usage };
const ms = anthropic.messages.stream({
    model: "claude-x", max_tokens: 16, messages: [{ role: "user", content: "hi" }] });
let streamed = "";
ms.on("text", (t) => { streamed += t; });
const final = await ms.finalMessage();
out.message_stream = { text: streamed, usage: final.usage, stop: final.stop_reason };
try {
    await anthropic.messages.create({ model: 123, max_tokens: 16, messages: [] });
    out.message_error = null;
} catch (e) {
    out.message_error = { status: e.status, type: e.error && e.error.error && e.error.error.type };
}
console.log(JSON.stringify(out));
