export {
  QmpClient,
  type QmpClientOptions,
  type ConnectOptions,
  type ExecuteOptions,
  type AddFdOptions,
  type AddFdResult,
  type QmpGreeting,
  type QmpRunState,
} from './client.ts';
export { QmpEventStream, type QmpEvent, type EventStreamOptions } from './events.ts';
export {
  QmpError,
  QmpBusyError,
  QmpConnectError,
  QmpProtocolError,
  QmpCommandError,
  QmpTimeoutError,
  QmpAbortedError,
  QmpDisconnectedError,
  type QmpErrorCode,
} from './errors.ts';
export { connectUnixSocket, type QmpTransport, type TransportHandlers, type TransportFactory } from './transport.ts';
export { findQmpServerProcess, readCmdline, parseProcNetUnix, type QmpServerProcess, type UnixSocketEntry } from './peer.ts';
