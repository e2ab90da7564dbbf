import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './App';
import { DesktopApp } from './components/Desktop';
import { inDesktop } from './lib/desktop';
import './styles.css';

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    {inDesktop ? <DesktopApp /> : <App />}
  </StrictMode>,
);
