export { VmsaveClient } from './client.ts';
