export { PAGE_SIZE, HEARTBEAT_ADDR, DATA_START, PAGE_MAGIC, HEARTBEAT_MAGIC, HB, HB_WINDOWS, pageChecksum, makePage } from './layout.ts';
export {
  analyseDump,
  parseHeartbeat,
  stoppedTime,
  stoppedMs,
  tscHzBetween,
  type Heartbeat,
  type StallWindow,
  type StallWindows,
  type HeartbeatSample,
  type StoppedTime,
  type DumpAnalysis,
  type AnalyseOptions,
  type PageIssue,
  type PageProblem,
  type InFlight,
} from './checker.ts';
export { guestAppend, type GuestParams } from './params.ts';
