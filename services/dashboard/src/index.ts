export { createDashboard, DashboardHttpError, type DashboardOptions } from './server.ts';
export { loadConfig, DashboardEnv, type DashboardConfig } from './config.ts';
export { ProgressHub, type ThroughputPoint } from './progress.ts';
