// Run by connect.int.spec.ts: connect to argv[2], print the outcome as JSON, and end on its own (no process.exit).
import { connectRedis } from '../src/index.ts';

try {
  const redis = await connectRedis(process.argv[2]!);
  redis.disconnect();
  console.log(JSON.stringify({ ok: true }));
} catch (err) {
  const e = err as { name: string; code: string; retryable: boolean; message: string };
  console.log(JSON.stringify({ ok: false, name: e.name, code: e.code, retryable: e.retryable, message: e.message }));
}
