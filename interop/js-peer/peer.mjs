// A matrix-js-sdk client with its Rust crypto (WASM) and encrypted state events on, as Element
// Web runs it, driven by the integration suite: one JSON command per line on stdin, one JSON
// answer per line on stdout ({"ok": true, "result": ...} or {"ok": false, "error": "..."}).

// Node 20 lacks Promise.withResolvers, which matrix-js-sdk uses.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function () {
        let resolve, reject;
        const promise = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

import readline from "node:readline";
import { format } from "node:util";

// Stdout carries the answers only: every log goes to stderr.
for (const level of ["log", "info", "debug", "warn", "trace"]) {
    console[level] = (...args) => process.stderr.write(format(...args) + "\n");
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel("error");

let client = null;
let password = null;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, timeoutSecs, condition) {
    const deadline = Date.now() + timeoutSecs * 1000;
    for (;;) {
        const value = await condition();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutSecs}s waiting for ${what}`);
        await sleep(200);
    }
}

function stateContent(room, type) {
    const event = room?.currentState.getStateEvents(type, "");
    return event ? event.getContent() : null;
}

const commands = {
    async register({ homeserver, username, password: pass }) {
        const bare = sdk.createClient({ baseUrl: homeserver });
        const session = await bare.registerRequest({
            username,
            password: pass,
            auth: { type: "m.login.dummy" },
        });
        password = pass;
        client = sdk.createClient({
            baseUrl: homeserver,
            userId: session.user_id,
            accessToken: session.access_token,
            deviceId: session.device_id,
            enableEncryptedStateEvents: true,
        });
        await client.initRustCrypto({ useIndexedDB: false });
        await client.getCrypto().bootstrapCrossSigning({
            authUploadDeviceSigningKeys: async (makeRequest) => {
                await makeRequest({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: session.user_id },
                    password,
                });
            },
        });
        const prepared = new Promise((resolve) => {
            client.on(sdk.ClientEvent.Sync, (state) => {
                if (state === "PREPARED") resolve();
            });
        });
        await client.startClient({ initialSyncLimit: 20 });
        await prepared;
        return { user_id: session.user_id, device_id: session.device_id };
    },

    async join({ room_id, timeout }) {
        await until("the invite", timeout, () => client.getRoom(room_id)?.getMyMembership() === "invite");
        await client.joinRoom(room_id);
        await until("the join", timeout, () => client.getRoom(room_id)?.getMyMembership() === "join");
        return {};
    },

    async create_room() {
        const { room_id } = await client.createRoom({
            preset: "private_chat",
            initial_state: [
                {
                    type: "m.room.encryption",
                    state_key: "",
                    content: {
                        algorithm: "m.megolm.v1.aes-sha2",
                        "io.element.msc4362.encrypt_state_events": true,
                    },
                },
            ],
        });
        await until("the new room", 30, () => client.getRoom(room_id)?.hasEncryptionStateEvent());
        return { room_id };
    },

    async invite({ room_id, user_id }) {
        await client.invite(room_id, user_id);
        return {};
    },

    async set_name({ room_id, name }) {
        await client.setRoomName(room_id, name);
        return {};
    },

    async send({ room_id, body }) {
        await client.sendTextMessage(room_id, body);
        return {};
    },

    async wait_state({ room_id, name, topic, timeout }) {
        let seen = {};
        try {
            await until("the state", timeout, () => {
                const room = client.getRoom(room_id);
                seen = {
                    name: stateContent(room, "m.room.name")?.name ?? null,
                    topic: stateContent(room, "m.room.topic")?.topic ?? null,
                };
                return (name === null || seen.name === name) && (topic === null || seen.topic === topic);
            });
            return { matched: true, seen };
        } catch {
            return { matched: false, seen };
        }
    },

    async wait_message({ room_id, body, timeout }) {
        try {
            await until("the message", timeout, async () => {
                const room = client.getRoom(room_id);
                for (const event of room?.getLiveTimeline().getEvents() ?? []) {
                    await client.decryptEventIfNeeded(event);
                    if (event.getContent()?.body === body) return true;
                }
                return false;
            });
            return { found: true };
        } catch {
            return { found: false };
        }
    },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
    let answer;
    try {
        const { cmd, args } = JSON.parse(line);
        const command = commands[cmd];
        if (!command) throw new Error(`unknown command ${cmd}`);
        answer = { ok: true, result: await command(args ?? {}) };
    } catch (error) {
        answer = { ok: false, error: String(error?.stack ?? error) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
}
client?.stopClient();
process.exit(0);
